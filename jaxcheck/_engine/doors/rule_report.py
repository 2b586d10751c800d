"""What :func:`jaxcheck.check_rule` found, worded for a custom rule: the RuleReport."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jaxcheck._engine.verdict.classify import Status
from jaxcheck.report import Report, Voice

__all__ = ["RuleReport"]


@dataclasses.dataclass(repr=False)  # keep Report's short repr
class RuleReport(Report):
    """A :class:`~jaxcheck.Report` about a custom differentiation rule.

    ``backprop`` in the table is the rule's vjp. With ``expected="surrogate"`` the rule is not
    judged: the leaves keep the status the differences would have earned, but none of them
    fails and the report is ok.

    Attributes:
        subject: what is checked, e.g. ``"the custom rule of relu"``.
        witness: the autodiff opinion in words, or None for a two-way check.
        expected: ``"derivative"`` or ``"surrogate"``.
        seed: the seed of the cotangent.
        static: the arguments passed through unchecked.
        noun: what ``backprop`` is called in sentences: ``"rule"``, ``"backward"``.
    """

    check_name: ClassVar[str | None] = "rule"

    subject: str = "the custom rule"
    witness: str | None = None
    expected: str = "derivative"
    seed: int = 0
    static: list[str] = dataclasses.field(default_factory=list)
    noun: str = "rule"

    @classmethod
    def from_report(cls, report: Report, **fields: Any) -> RuleReport:
        """The engine's report, about the rule; not judged when the rule is a surrogate.

        The engine writes the leaves' messages about the rule already (``run(..., noun=)``).
        """
        base = {f.name: getattr(report, f.name) for f in dataclasses.fields(Report)}
        out = cls(**{**base, **fields})
        if out.expected == "surrogate":
            out.ok = True
            for leaf in out.leaves.values():
                if not leaf.ok:
                    leaf.ok = True
                    leaf.message = f"not judged (surrogate rule): {leaf.message}"
        return out

    @property
    def surrogate(self) -> bool:
        """Whether the rule is a deliberate surrogate, reported but not judged."""
        return self.expected == "surrogate"

    @property
    def failing(self) -> list[str]:
        """Paths of the leaves whose rule is wrong (none for a surrogate)."""
        return [] if self.surrogate else super().failing

    @property
    def inconclusive(self) -> list[str]:
        """Paths of the leaves no opinion could settle (none for a surrogate)."""
        return [] if self.surrogate else super().inconclusive

    @property
    def verdict(self) -> str:
        """The verdict in words, one sentence per finding."""
        notes = [leaf.message for leaf in self.leaves.values() if leaf.message]
        subject = self.subject[0].upper() + self.subject[1:]
        if self.surrogate:
            differ = [p for p, leaf in self.leaves.items() if leaf.status not in _AGREE]
            found = (
                f"it differs from the derivative in {', '.join(differ)}"
                if differ
                else "it agrees with the derivative"
            )
            head = f"Surrogate rule: not judged. {subject} is a surrogate by design; {found}."
        else:
            voice = Voice(
                f"{subject} is",
                self.subject,
                self.witness,
                "finite differences",
                "the reference",
            )
            head = self._head(notes, voice)
        return "\n".join([head, *notes])

    def _header(self) -> str:
        static = f", static: {', '.join(self.static)}" if self.static else ""
        opinions = "two-way: no reference"
        if self.witness is not None:
            opinions = self.witness
            if self.twin not in ("none", "torch"):
                opinions += f", twin mismatch {self.cost_mismatch:.1e}"
        return (
            f"jaxcheck: {self.subject}, {self.method} check of {self._extent('inputs')} "
            f"({self.dtype} {self.noun}, cotangent seed {self.seed}"
            f"{static}) — {opinions}"
        )

    def _rows(self) -> list[list[str]]:
        rows = super()._rows()
        if self.surrogate:
            for row, leaf in zip(rows, self.leaves.values()):
                if leaf.status not in _AGREE:
                    row[-1] = "not judged"
        return rows

    def _closing_notes(self) -> list[str]:
        if self.twin != "none" and self.autodiff:
            return []
        return [
            f"Two-way check: the {self.noun} was compared with finite differences alone; pass "
            f"reference= (the function without its {self.noun}) for the third opinion."
        ]


_AGREE = (Status.OK, Status.KINK, Status.ROUNDING, Status.FD_UNRELIABLE)
