"""Recompiles the user's source so that the same NumPy code also runs on JAX values.

Inside every function and lambda of a file, each call goes through ``call``, each subscript load
through ``getitem``, each assignment into a subscript through ``setitem``/``augitem`` (which
rebind the target to a functional update when JAX values are involved), ``np.add.at`` statements
through ``ufunc_at``, and each loop body ticks a counter. Module and class bodies are left alone.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from typing import Any

from jaxcheck.port._scopes import FunctionScope, assigned_names, convertible, resolve

# The names the rewritten code uses; the ported functions' globals provide them.
CALL = "__jaxcheck_call__"
GETITEM = "__jaxcheck_getitem__"
SETITEM = "__jaxcheck_setitem__"
AUGITEM = "__jaxcheck_augitem__"
INPLACE = "__jaxcheck_inplace__"
UFUNC_AT = "__jaxcheck_ufunc_at__"
TICK = "__jaxcheck_tick__"
SLICE = "__jaxcheck_slice__"
ITEM = "__jaxcheck_item__"
HOLDS = "__jaxcheck_holds__"
CONDITION = "__jaxcheck_condition__"
BRANCHES = "__jaxcheck_branches__"

# Calls that need their caller's own frame, and so are not routed through CALL.
_FRAME_BOUND = frozenset({"super", "locals", "globals", "vars", "dir", "eval", "exec"})
_OPS = {
    ast.Add: "add",
    ast.Sub: "sub",
    ast.Mult: "mul",
    ast.Div: "truediv",
    ast.FloorDiv: "floordiv",
    ast.Mod: "mod",
    ast.Pow: "pow",
    ast.MatMult: "matmul",
    ast.BitAnd: "and",
    ast.BitOr: "or",
    ast.BitXor: "xor",
    ast.LShift: "lshift",
    ast.RShift: "rshift",
}
#: Loop sites: the (filename, line) of each loop whose body ticks, by the number it ticks with.
SITES: list[tuple[str, int]] = []

_Store = Callable[[ast.expr], list[ast.stmt]]


def _name(identifier: str) -> ast.Name:
    return ast.Name(identifier, ast.Load())


def _helper(
    identifier: str, *args: ast.expr, keywords: list[ast.keyword] | None = None
) -> ast.Call:
    return ast.Call(_name(identifier), list(args), keywords or [])


def _assign(identifier: str, value: ast.expr) -> ast.Assign:
    return ast.Assign([ast.Name(identifier, ast.Store())], value)


def _changed(new: str, old: ast.expr) -> ast.expr:
    return ast.Compare(_name(new), [ast.IsNot()], [old])


def _is_simple(node: ast.expr) -> bool:
    return isinstance(node, (ast.Name, ast.Constant))


class Rewriter(ast.NodeTransformer):
    """Rewrites the functions and lambdas of one file; see the module docstring."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.in_function = False
        self.scopes: list[FunctionScope | None] = []  # None for a class body

    # ---- scopes ------------------------------------------------------------------------------

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        for field in ("decorator_list", "returns", "type_params"):
            value = getattr(node, field, None)
            if isinstance(value, list):
                setattr(node, field, [self.visit(v) for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self.visit(value))
        node.args = self.visit(node.args)
        scope = FunctionScope.of(node)
        outer, self.in_function = self.in_function, True
        self.scopes.append(scope)
        try:
            node.body = self._block(node.body)
        finally:
            self.scopes.pop()
            self.in_function = outer
        declarations: list[ast.stmt] = []
        if scope.needs_global:
            declarations.append(ast.Global(sorted(scope.needs_global)))
        if scope.needs_nonlocal:
            declarations.append(ast.Nonlocal(sorted(scope.needs_nonlocal)))
        if declarations:
            for declaration in declarations:
                ast.copy_location(declaration, node.body[0])
            docstring = (
                isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
                and isinstance(node.body[0].value.value, str)
            )
            node.body[int(docstring) : int(docstring)] = declarations
        return node

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.decorator_list = [self.visit(v) for v in node.decorator_list]
        node.bases = [self.visit(v) for v in node.bases]
        node.keywords = [self.visit(v) for v in node.keywords]
        outer, self.in_function = self.in_function, False
        self.scopes.append(None)
        try:
            node.body = self._block(node.body)
        finally:
            self.scopes.pop()
            self.in_function = outer
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        node.args = self.visit(node.args)
        outer, self.in_function = self.in_function, True
        try:
            node.body = self.visit(node.body)
        finally:
            self.in_function = outer
        return node

    def _block(self, statements: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for statement in statements:
            result = self.visit(statement)
            if isinstance(result, list):
                out.extend(result)
            elif result is not None:
                out.append(result)
        return out or [ast.Pass()]

    def _temp(self) -> str:
        scope = self.scopes[-1]
        assert scope is not None
        scope.temps += 1
        return f"__jaxcheck_{scope.temps}__"

    def _located(self, statements: list[ast.stmt], original: ast.stmt) -> list[ast.stmt]:
        for statement in statements:
            for node in ast.walk(statement):
                if "lineno" in node._attributes and not hasattr(node, "lineno"):
                    ast.copy_location(node, original)
        return statements

    # ---- expressions -------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if not self.in_function:
            return node
        if isinstance(node.func, ast.Name) and node.func.id in _FRAME_BOUND:
            return node
        if isinstance(node.func, ast.Attribute) and node.func.attr == "item":
            if not node.args and not node.keywords:  # x.item() of a traced x stays traced
                return ast.copy_location(_helper(ITEM, node.func.value), node)
        call = ast.Call(_name(CALL), [node.func, *node.args], node.keywords)
        return ast.copy_location(call, node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        if not self.in_function or not isinstance(node.ctx, ast.Load):
            return node
        load = _helper(GETITEM, node.value, self._index(node.slice))
        return ast.copy_location(load, node)

    def _index(self, index: ast.expr) -> ast.expr:
        """The index of a subscript as an expression: `a:b` becomes `slice(a, b, None)`."""
        if isinstance(index, ast.Slice):
            parts = [
                p if p is not None else ast.Constant(None)
                for p in (index.lower, index.upper, index.step)
            ]
            return ast.copy_location(_helper(SLICE, *parts), index)
        if isinstance(index, ast.Tuple) and any(isinstance(e, ast.Slice) for e in index.elts):
            elements = [self._index(e) for e in index.elts]
            return ast.copy_location(ast.Tuple(elements, ast.Load()), index)
        return index

    # ---- statements --------------------------------------------------------------------------

    def visit_Assign(self, node: ast.Assign) -> Any:
        if not self.in_function or not any(_has_subscript(t) for t in node.targets):
            return self.generic_visit(node)
        out: list[ast.stmt] = []
        if len(node.targets) == 1:
            self._hoist_index(node.targets[0], node.value, out)
        value = self.visit(node.value)
        if not _is_simple(value) or len(node.targets) > 1:
            temp = self._temp()
            out.append(_assign(temp, value))
            value = _name(temp)
        for target in node.targets:
            out.extend(self._store(target, value))
        return self._located(out, node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        if self.in_function and node.value is not None and isinstance(node.target, ast.Subscript):
            assign = ast.copy_location(ast.Assign([node.target], node.value), node)
            return self.visit_Assign(assign)
        return self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        if not self.in_function:
            return self.generic_visit(node)
        op = ast.Constant(_OPS[type(node.op)])
        hoisted: list[ast.stmt] = []
        self._hoist_index(node.target, node.value, hoisted)
        value = self.visit(node.value)
        target = node.target
        out: list[ast.stmt]
        if isinstance(target, ast.Name):
            update = _helper(INPLACE, _name(target.id), op, value)
            out = [ast.Assign([ast.Name(target.id, ast.Store())], update)]
        elif isinstance(target, ast.Attribute):
            base = self._temp()
            current = ast.Attribute(_name(base), target.attr, ast.Load())
            stored = ast.Attribute(_name(base), target.attr, ast.Store())
            out = [
                _assign(base, self.visit(target.value)),
                ast.Assign([stored], _helper(INPLACE, current, op, value)),
            ]
        elif isinstance(target, ast.Subscript):
            out, container, store = self._container(target.value)
            out[:0] = hoisted
            index = self._evaluated(self._index(self.visit(target.slice)), out)
            new = self._temp()
            out.append(_assign(new, _helper(AUGITEM, container, index, op, value)))
            out.append(ast.If(_changed(new, container), store(_name(new)) or [ast.Pass()], []))
        else:
            return self.generic_visit(node)
        return self._located(out, node)

    def visit_Expr(self, node: ast.Expr) -> Any:
        call = node.value
        if (
            self.in_function
            and isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "at"
            and len(call.args) >= 2
            and isinstance(call.args[0], (ast.Name, ast.Attribute, ast.Subscript))
            and not any(isinstance(a, ast.Starred) for a in call.args)
        ):
            # np.add.at(dx, idx, v): an in-place update the port turns into a functional one.
            out: list[ast.stmt] = []
            func = self._evaluated(self.visit(call.func), out)
            setup, container, store = self._container(call.args[0])
            out.extend(setup)
            rest = [self.visit(a) for a in call.args[1:]]
            keywords = [self.visit(k) for k in call.keywords]
            new = self._temp()
            out.append(_assign(new, _helper(UFUNC_AT, func, container, *rest, keywords=keywords)))
            out.append(ast.If(_changed(new, container), store(_name(new)) or [ast.Pass()], []))
            return self._located(out, node)
        if self.in_function and isinstance(call, ast.Call):
            targets = [k for k in call.keywords if k.arg == "out"]
            if targets and isinstance(targets[0].value, (ast.Name, ast.Attribute, ast.Subscript)):
                return self._located(self._out_argument(call, targets[0]), node)
        return self.generic_visit(node)

    def _out_argument(self, call: ast.Call, target: ast.keyword) -> list[ast.stmt]:
        """``np.exp(x, out=x)``: where JAX gives a new array instead, ``x`` is rebound to it."""
        out: list[ast.stmt] = []
        func = self._evaluated(self.visit(call.func), out)
        setup, container, store = self._container(target.value)
        out.extend(setup)
        args = [self.visit(a) for a in call.args]
        keywords = [
            ast.keyword("out", container) if k is target else self.visit(k) for k in call.keywords
        ]
        new = self._temp()
        out.append(_assign(new, ast.Call(_name(CALL), [func, *args], keywords)))
        out.append(ast.If(_changed(new, container), store(_name(new)) or [ast.Pass()], []))
        return out

    def visit_Assert(self, node: ast.Assert) -> Any:
        """``assert a and not b, msg``: each part is checked unless JAX is tracing its value.

        A traced value is not known while JAX traces; the user's own NumPy run checks it at θ.
        ``and``, ``or`` and ``not`` keep Python's short circuits, on three values: true, false
        and unknown (traced).
        """
        if not self.in_function:
            return self.generic_visit(node)
        if node.msg is not None:
            node.msg = self.visit(node.msg)
        out: list[ast.stmt] = []
        truth = self._truth(node.test, out, HOLDS)
        failed = ast.Compare(_name(truth), [ast.IsNot()], [ast.Constant(False)])
        out.append(ast.Assert(failed, node.msg))
        return self._located(out, node)

    def _truth(self, test: ast.expr, out: list[ast.stmt], helper: str) -> str:
        """Statements setting a temporary to the truth of ``test``, as ``helper`` finds it.

        ``and``, ``or`` and ``not`` are taken apart, short circuits kept, so that ``helper``
        sees each part (a value JAX traces cannot go through Python's ``and``).
        """
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self._truth(test.operand, out, helper)
            result = self._temp()
            out.append(_assign(result, _helper(helper, _name(inner), ast.Constant("not"))))
            return result
        if isinstance(test, ast.Compare) and len(test.ops) > 1 and _is_pure(test):
            # 0 < p < 1: Python's chain asks for the truth of `0 < p` itself; as `and` it
            # goes through the helper (the middle operands have no calls: evaluated twice).
            operands = [test.left, *test.comparators]
            pairs: list[ast.expr] = [
                ast.copy_location(ast.Compare(operands[i], [op], [operands[i + 1]]), test)
                for i, op in enumerate(test.ops)
            ]
            test = ast.copy_location(ast.BoolOp(ast.And(), pairs), test)
        if isinstance(test, ast.BoolOp):
            stop, op = (False, "and") if isinstance(test.op, ast.And) else (True, "or")
            result = self._truth(test.values[0], out, helper)
            for value in test.values[1:]:
                then: list[ast.stmt] = []
                part = self._truth(value, then, helper)
                combined = _helper(helper, _name(result), ast.Constant(op), _name(part))
                then.append(_assign(result, combined))
                out.append(ast.If(_changed(result, ast.Constant(stop)), then, []))
            return result
        result = self._temp()
        out.append(_assign(result, _helper(helper, self.visit(test), ast.Constant(None))))
        return result

    def visit_If(self, node: ast.If) -> Any:
        """An ``if`` whose branches only assign variables runs as written on a condition Python
        knows, and is if-converted (both branches, merged by ``where``) on one JAX traces.

        Each branch is written once (nested ``elif`` chains do not multiply the code)::

            c = <test>                      # True, False, or a traced condition
            traced = c is not True and c is not False
            if traced: s = Branches(...); names = s.enter(True)
            if c is True or traced: <then>
            if traced: s.leave(True, names); names = s.enter(False)
            if c is False or traced: <else>
            if traced: s.leave(False, names); names = s.merged()
        """
        if not self.in_function or not convertible(node, self.scopes):
            return self.generic_visit(node)
        assigned, containers, read = assigned_names(node, self.scopes)
        out: list[ast.stmt] = []
        test = self._truth(node.test, out, CONDITION)
        then, otherwise = self._block(node.body), self._block(node.orelse)
        names = [*assigned, *read]
        state, traced = self._temp(), self._temp()

        def strings(items: list[str]) -> ast.Tuple:
            return ast.Tuple([ast.Constant(n) for n in items], ast.Load())

        def pack(items: list[str], ctx: ast.expr_context) -> ast.Tuple:
            return ast.Tuple([ast.Name(n, ctx) for n in items], ctx)

        def method(name: str, *args: ast.expr) -> ast.Call:
            return ast.Call(ast.Attribute(_name(state), name, ast.Load()), list(args), [])

        def enter(side: bool) -> ast.stmt:
            return ast.Assign([pack(names, ast.Store())], method("enter", ast.Constant(side)))

        def leave(side: bool) -> ast.stmt:
            return ast.Expr(method("leave", ast.Constant(side), pack(assigned, ast.Load())))

        def taken(side: bool) -> ast.expr:
            return ast.BoolOp(
                ast.Or(),
                [ast.Compare(_name(test), [ast.Is()], [ast.Constant(side)]), _name(traced)],
            )

        start = _helper(
            BRANCHES,
            _name(test),
            ast.Call(_name("locals"), [], []),
            strings(assigned),
            strings(containers),
            strings(read),
            ast.Constant(node.lineno),
        )
        known: list[ast.expr] = [
            ast.Compare(_name(test), [ast.IsNot()], [ast.Constant(v)]) for v in (True, False)
        ]
        out += [
            _assign(traced, ast.BoolOp(ast.And(), known)),
            ast.If(_name(traced), [_assign(state, start), enter(True)], []),
            ast.If(taken(True), then, []),
            ast.If(_name(traced), [leave(True), enter(False)], []),
            ast.If(taken(False), otherwise, []),
            ast.If(
                _name(traced),
                [leave(False), ast.Assign([pack(names, ast.Store())], method("merged"))],
                [],
            ),
        ]
        return self._located(out, node)

    def _loop(self, node: ast.For | ast.AsyncFor | ast.While) -> ast.AST:
        self.generic_visit(node)
        if self.in_function:
            SITES.append((self.filename, node.lineno))
            tick = ast.Expr(_helper(TICK, ast.Constant(len(SITES) - 1)))
            node.body.insert(0, ast.copy_location(tick, node.body[0]))
            ast.fix_missing_locations(tick)
        return node

    visit_For = _loop
    visit_AsyncFor = _loop
    visit_While = _loop

    def _hoist_index(self, target: ast.expr, value: ast.expr, out: list[ast.stmt]) -> None:
        """``z[x > 0] = f(x[x > 0])``: the index computed once, so both sides share one mask.

        Only for an index without calls (their results could differ between two calls).
        """
        if not isinstance(target, ast.Subscript) or _is_simple(target.slice):
            return
        key = ast.dump(target.slice)
        if not _is_pure(target.slice) or not any(
            isinstance(n, ast.Subscript) and ast.dump(n.slice) == key for n in ast.walk(value)
        ):
            return
        temp = self._temp()
        out.append(_assign(temp, self.visit(target.slice)))
        for node in (target, *ast.walk(value)):
            if isinstance(node, ast.Subscript) and ast.dump(node.slice) == key:
                node.slice = _name(temp)

    # ---- assignment targets ------------------------------------------------------------------

    def _evaluated(self, expr: ast.expr, out: list[ast.stmt]) -> ast.expr:
        """``expr`` itself when it is a name or constant, else a temporary assigned to it."""
        if _is_simple(expr):
            return expr
        temp = self._temp()
        out.append(_assign(temp, expr))
        return _name(temp)

    def _store(self, target: ast.expr, value: ast.expr) -> list[ast.stmt]:
        """Statements that assign ``value`` (a name or constant) to ``target``."""
        if isinstance(target, ast.Subscript):
            out, container, store = self._container(target.value)
            index = self._evaluated(self._index(self.visit(target.slice)), out)
            new = self._temp()
            out.append(_assign(new, _helper(SETITEM, container, index, value)))
            out.append(ast.If(_changed(new, container), store(_name(new)) or [ast.Pass()], []))
            return out
        if isinstance(target, (ast.Tuple, ast.List)) and _has_subscript(target):
            later: list[ast.stmt] = []
            elements = []
            for element in target.elts:
                inner = element.value if isinstance(element, ast.Starred) else element
                if _has_subscript(inner):
                    temp = self._temp()
                    later.extend(self._store(inner, _name(temp)))
                    inner = ast.Name(temp, ast.Store())
                else:
                    inner = self.visit(inner)
                elements.append(
                    ast.Starred(inner, ast.Store()) if isinstance(element, ast.Starred) else inner
                )
            return [ast.Assign([type(target)(elements, ast.Store())], value), *later]
        return [ast.Assign([self.visit(target)], value)]

    def _container(self, node: ast.expr) -> tuple[list[ast.stmt], ast.expr, _Store]:
        """How to read the container being assigned into, and how to rebind it to a new value.

        Returns the statements that evaluate it, an expression (a name) holding it, and a
        function giving the statements that put a new container in its place.
        """
        if isinstance(node, ast.Name):
            return [], _name(node.id), functools.partial(self._rebind_name, node.id)
        if isinstance(node, ast.Attribute):
            out: list[ast.stmt] = []
            base = self._evaluated(self.visit(node.value), out)
            holder = self._temp()
            out.append(_assign(holder, ast.Attribute(base, node.attr, ast.Load())))

            def store_attribute(new: ast.expr) -> list[ast.stmt]:
                return [ast.Assign([ast.Attribute(base, node.attr, ast.Store())], new)]

            return out, _name(holder), store_attribute
        if isinstance(node, ast.Subscript):
            out, outer, store_outer = self._container(node.value)
            index = self._evaluated(self._index(self.visit(node.slice)), out)
            holder = self._temp()
            out.append(_assign(holder, _helper(GETITEM, outer, index)))

            def store_item(new: ast.expr) -> list[ast.stmt]:
                replaced = self._temp()
                return [
                    _assign(replaced, _helper(SETITEM, outer, index, new)),
                    ast.If(
                        _changed(replaced, outer), store_outer(_name(replaced)) or [ast.Pass()], []
                    ),
                ]

            return out, _name(holder), store_item
        out = []
        evaluated = self._evaluated(self.visit(node), out)
        return out, evaluated, lambda new: []

    def _rebind_name(self, identifier: str, new: ast.expr) -> list[ast.stmt]:
        scope = self.scopes[-1]
        assert scope is not None
        kind = resolve(identifier, self.scopes)
        if kind == "global":
            scope.needs_global.add(identifier)
        elif kind == "nonlocal":
            scope.needs_nonlocal.add(identifier)
        return [ast.Assign([ast.Name(identifier, ast.Store())], new)]


def _has_subscript(target: ast.expr) -> bool:
    if isinstance(target, ast.Subscript):
        return True
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(
            _has_subscript(e.value if isinstance(e, ast.Starred) else e) for e in target.elts
        )
    return False


_PURE = (
    ast.Name,
    ast.Constant,
    ast.Attribute,
    ast.Compare,
    ast.UnaryOp,
    ast.BinOp,
    ast.BoolOp,
    ast.Tuple,
    ast.expr_context,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
    ast.boolop,
)


def _is_pure(index: ast.expr) -> bool:
    """Whether evaluating ``index`` twice gives the same value (no calls, no subscripts)."""
    return all(isinstance(node, _PURE) for node in ast.walk(index))
