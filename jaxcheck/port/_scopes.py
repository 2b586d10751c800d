"""Which names a function binds, so that a rewritten assignment rebinds the right variable.

``x[i] = v`` never makes ``x`` local; its rewrite ``x = <updated x>`` would, so when ``x`` is a
global or a closure variable the rewritten function declares it ``global`` or ``nonlocal``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass
class FunctionScope:
    """The names one function binds or declares, and the declarations its rewrite needs."""

    bound: set[str]
    declared_global: set[str]
    declared_nonlocal: set[str]
    needs_global: set[str] = field(default_factory=set)
    needs_nonlocal: set[str] = field(default_factory=set)
    temps: int = 0

    @classmethod
    def of(cls, node: ast.FunctionDef | ast.AsyncFunctionDef) -> FunctionScope:
        """The scope of a function, from its source.

        Examples:
            >>> tree = ast.parse("def f(a):\\n    global g\\n    b = a\\n    def h(): pass")
            >>> scope = FunctionScope.of(tree.body[0])
            >>> sorted(scope.bound), sorted(scope.declared_global)
            (['a', 'b', 'h'], ['g'])
        """
        arguments = node.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
        bound = {a.arg for a in every}
        declared_global: set[str] = set()
        declared_nonlocal: set[str] = set()
        stack: list[ast.AST] = list(node.body)
        while stack:
            item = stack.pop()
            if isinstance(item, _NESTED):
                bound.add(item.name)
                stack.extend(item.decorator_list)
                if isinstance(item, ast.ClassDef):
                    stack.extend(item.bases)
                    stack.extend(k.value for k in item.keywords)
                else:
                    stack.extend(item.args.defaults)
                    stack.extend(d for d in item.args.kw_defaults if d is not None)
                continue
            if isinstance(item, ast.Lambda):
                stack.extend(item.args.defaults)
                stack.extend(d for d in item.args.kw_defaults if d is not None)
                continue
            if isinstance(item, _COMPREHENSIONS):
                # Only := binds in the enclosing function; the loop variables are the
                # comprehension's own.
                for inner in ast.walk(item):
                    if isinstance(inner, ast.NamedExpr) and isinstance(inner.target, ast.Name):
                        bound.add(inner.target.id)
                stack.append(item.generators[0].iter)
                continue
            if isinstance(item, ast.Global):
                declared_global.update(item.names)
            elif isinstance(item, ast.Nonlocal):
                declared_nonlocal.update(item.names)
            elif isinstance(item, ast.Name) and not isinstance(item.ctx, ast.Load):
                bound.add(item.id)
            elif isinstance(item, ast.alias) and item.name != "*":
                bound.add(item.asname or item.name.partition(".")[0])
            elif isinstance(item, ast.ExceptHandler) and item.name:
                bound.add(item.name)
            else:
                for attribute in (
                    "name",
                    "rest",
                ):  # match patterns: MatchAs, MatchStar, mapping rest
                    value = getattr(item, attribute, None)
                    if isinstance(value, str) and isinstance(item, ast.pattern):
                        bound.add(value)
            stack.extend(ast.iter_child_nodes(item))
        bound -= declared_global | declared_nonlocal
        return cls(bound, declared_global, declared_nonlocal)


def resolve(name: str, scopes: list[FunctionScope | None]) -> str:
    """Where an assignment to ``name`` in the innermost scope must go.

    Returns "local" when it is the function's own variable (or already declared), "nonlocal"
    when an enclosing function binds it, and "global" otherwise. ``None`` entries are class
    bodies, which functions nested in them do not see.
    """
    current = scopes[-1]
    assert current is not None
    if (
        name in current.bound
        or name in current.declared_global
        or name in current.declared_nonlocal
    ):
        return "local"
    for scope in reversed(scopes[:-1]):
        if scope is None:
            continue
        if name in scope.declared_global:
            return "global"
        if name in scope.bound or name in scope.declared_nonlocal:
            return "nonlocal"
    return "global"


# Nodes a branch of an if-converted `if` may not hold: code objects of their own (the rewrite
# runs each branch twice) or effects the other branch would see.
_NOT_CONVERTIBLE = (
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.NamedExpr,
    ast.Yield,
    ast.YieldFrom,
    ast.Await,
    ast.Starred,
)


def _target_root(target: ast.expr) -> str | None:
    """``x`` of ``x``, ``x[i]`` or ``x[i][j]``; None for other targets (attributes)."""
    while isinstance(target, ast.Subscript):
        target = target.value
    return target.id if isinstance(target, ast.Name) else None


def _statement_ok(statement: ast.stmt, scopes: list[FunctionScope | None]) -> bool:
    if isinstance(statement, ast.Pass):
        return True
    if isinstance(statement, ast.If):
        return convertible(statement, scopes)
    if isinstance(statement, ast.Assign):
        targets: list[ast.expr] = []
        for target in statement.targets:
            targets.extend(target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target])
    elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)) and statement.value is not None:
        targets = [statement.target]
    else:
        return False
    roots = [_target_root(t) for t in targets]
    return all(r is not None and resolve(r, scopes) == "local" for r in roots)


def convertible(node: ast.If, scopes: list[FunctionScope | None]) -> bool:
    """Whether both branches of ``node`` only assign local variables (and items of them)."""
    body = [*node.body, *node.orelse]
    if not all(_statement_ok(s, scopes) for s in body):
        return False
    return not any(isinstance(n, _NOT_CONVERTIBLE) for s in body for n in ast.walk(s))


def assigned_names(
    node: ast.If, scopes: list[FunctionScope | None]
) -> tuple[list[str], list[str], list[str]]:
    """The local names the branches of ``node`` assign, assign into, and only read."""
    assigned: set[str] = set()
    containers: set[str] = set()
    read: set[str] = set()
    for statement in [*node.body, *node.orelse]:
        for inner in ast.walk(statement):
            if isinstance(inner, ast.Name):
                (read if isinstance(inner.ctx, ast.Load) else assigned).add(inner.id)
            elif isinstance(inner, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = inner.targets if isinstance(inner, ast.Assign) else [inner.target]
                for target in targets:
                    if isinstance(target, ast.Subscript):
                        root = _target_root(target)
                        if root is not None:
                            containers.add(root)
    assigned |= containers
    read = {n for n in read - assigned if resolve(n, scopes) == "local"}
    return sorted(assigned), sorted(containers), sorted(read)
