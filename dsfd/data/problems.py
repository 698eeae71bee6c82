"""Bad annotations: each one reported with where it is and why, counted, and skipped (or fatal with ``strict``).

Every reader of :mod:`dsfd.data` (WIDER keeps its own counters, see
:mod:`dsfd.data.wider`; COCO and YOLO use this module) hands each problem it
finds to a :class:`ProblemReport`:

* ``location`` says where: ``labels/train/img_3.txt:2`` (file and 1-based
  line) for text files, ``instances.json:annotations[12].bbox[2]`` (file and
  JSON path) for JSON, ``instances.json:57:14`` (line and column) for a JSON
  file that does not parse;
* ``reason`` is one of :data:`REASONS` (what is counted), ``detail`` the
  specifics (values, the image size, what was expected).

A normal run skips the bad item (the box, or the image when the image itself
is missing), counts it per reason and continues; with ``strict=True`` the
first problem raises :class:`AnnotationError`. A file that cannot be read at
all (``invalid_json``, or a JSON whose top level is not a COCO dictionary)
raises :class:`AnnotationError` whatever ``strict`` says: there is nothing
left to continue with.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional

__all__ = ["REASONS", "AnnotationProblem", "AnnotationError", "ProblemReport"]

log = logging.getLogger(__name__)

#: Every reason a reader reports, with what it means.
REASONS: Dict[str, str] = {
    "missing_image": "the image file of an entry does not exist",
    "outside_image": "the box does not overlap the image at all (boxes that stick out are clipped, not reported)",
    "degenerate": "zero or negative width or height",
    "non_numeric": "a coordinate or class field that is not a finite number",
    "class_out_of_range": "a class id outside the declared classes (YOLO), or a category_id with no category (COCO)",
    "malformed": "wrong number of fields, a bbox that is not 4 values, a missing or duplicate key",
    "unknown_image": "an annotation whose image_id is not in the images list (COCO)",
    "invalid_json": "the JSON file does not parse (truncated, not JSON); fatal",
}


@dataclass(frozen=True)
class AnnotationProblem:
    """One bad annotation: ``location``, ``reason`` (a key of :data:`REASONS`) and ``detail``."""

    location: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}: {self.detail}"


class AnnotationError(ValueError):
    """A bad annotation in a ``strict`` run, or an annotation file that cannot be read at all."""

    def __init__(self, problem: AnnotationProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class ProblemReport:
    """Collects the problems of one annotation source.

    Args:
        source: what is being read (for the log lines).
        strict: raise :class:`AnnotationError` at the first problem.
        log_limit: problems logged one by one (the rest only counted).
    """

    def __init__(self, source: str, strict: bool = False, log_limit: int = 10) -> None:
        self.source = source
        self.strict = bool(strict)
        self.log_limit = int(log_limit)
        self.problems: List[AnnotationProblem] = []

    def add(self, location: str, reason: str, detail: str) -> AnnotationProblem:
        """Record a problem (raises in strict mode). ``reason`` must be a key of :data:`REASONS`."""
        if reason not in REASONS:
            raise KeyError(f"unknown annotation problem reason {reason!r}")
        p = AnnotationProblem(location, reason, detail)
        if self.strict:
            raise AnnotationError(p)
        self.problems.append(p)
        if len(self.problems) <= self.log_limit:
            log.warning("skipping bad annotation %s", p)
        return p

    @staticmethod
    def fatal(location: str, reason: str, detail: str) -> AnnotationError:
        """The error to raise for a problem that leaves nothing to continue with."""
        return AnnotationError(AnnotationProblem(location, reason, detail))

    @property
    def counts(self) -> Dict[str, int]:
        """Problems per reason (only reasons that occurred), in :data:`REASONS` order."""
        c = Counter(p.reason for p in self.problems)
        return {r: c[r] for r in REASONS if c[r]}

    def summary(self) -> Optional[str]:
        """``"2 degenerate, 1 missing_image"`` or ``None`` when there were none."""
        counts = self.counts
        if not counts:
            return None
        more = len(self.problems) - self.log_limit
        tail = f" ({more} not logged one by one)" if more > 0 else ""
        return ", ".join(f"{n} {r}" for r, n in counts.items()) + tail
