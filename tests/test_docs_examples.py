"""Every example of README.md and docs/*.md runs (issue #24).

What counts as an example: each fenced block whose language is ``python``,
``bash``, ``sh``, ``shell`` or ``console``. Other fences (plain, ``text``)
are output or layouts and are not run.

How an example runs:

* **Working copy.** Each page gets its own temporary working copy of the
  repository (the files git tracks or would track, the built extension and
  the virtualenv linked in), laid out as ``<tmp>/main`` next to a small
  ``<tmp>/shared``. Examples run with the copy as the current directory,
  exactly as a user types them in the repository root, so their outputs
  (``detections/``, ``runs/``, ``exports/``, ...) land in the copy and vanish
  with it; the repository is never written. Examples write only to relative
  paths.
* **Small inputs.** ``../shared`` in the copy is a miniature of the real one:
  ``data/widerface`` holds the first 4 training photos of each event
  (downsized to 320 px) and its first validation photo (160 px), with their
  boxes scaled, the split files and the ground-truth ``.mat`` files cut to
  them (plus every ``WIDER_val`` photo a page names, full size and outside
  the ground truth);
  ``data/widerface_extra`` the first 2 photos of two events; ``fixtures``,
  ``weights`` (pretrained files) and ``data/fddb`` link to the real ones.
  ``DSFD_WIDER_ROOT`` / ``DSFD_FIXTURES_ROOT`` / ``DSFD_FDDB_ROOT`` point there
  too, and ``TORCH_HOME`` to an empty folder of the copy. The copy also holds
  ``photos/`` (three photos) and ``clip.mp4`` (a 2-second video) for the
  examples that take a user's own photos and videos.
* **Order.** The blocks of one page run in order in the page's copy, so a
  block may use what an earlier one wrote (a trained run, an exported file);
  running one block alone first runs the blocks before it on its page.
  Python blocks run in the test process, each in a fresh namespace (a block
  copied alone is a whole program); shell blocks run with ``bash -e -o
  pipefail`` and the virtualenv's ``bin`` first on ``PATH``; a ``console``
  block runs each ``$`` command (``\\`` continues a line) and ignores the
  lines shown as output.

Markers: an HTML comment right before a block (invisible on the rendered
page) changes how it runs::

    <!-- example: skip (downloads ~459 MB) -->        not run; reported as a skip with the reason
    <!-- example: replace "--iters 3600" "--iters 2" -->   run with this text replaced (repeatable);
                                                     the old text must be in the block
    <!-- example: exit 2 -->                         the (last) command must exit with 2
    <!-- example: timeout 400 -->                   seconds before the block is killed (default 300)

``replace`` is the documented small-input substitution: the page shows the
real command (thousands of iterations at 640 px) and the test runs the same
command on a budget that fits a 2-core CI machine. ``skip`` is for examples
that need a download, a GPU or several machines; the reason says which.
A block that needs the WIDER FACE data or the fixtures (it names
``../shared/data`` or ``../shared/fixtures``) is skipped with the reason when
they are absent.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from dsfd.data_paths import fddb_root, fixtures_root, repo_root, wider_root

ROOT = repo_root()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell", "console": "console"}
DEFAULT_TIMEOUT = 300

FENCE = re.compile(r"^([ \t]*)```([\w+-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*example:(.*)-->\Z", re.S)


@dataclass
class Example:
    page: Path
    line: int
    language: str
    code: str
    skip: Optional[str] = None
    replace: List[tuple] = field(default_factory=list)
    exit: int = 0
    timeout: int = DEFAULT_TIMEOUT

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def runnable_code(self) -> str:
        code = self.code
        for old, new in self.replace:
            if old not in code:
                pytest.fail(f"{self.id}: the marker replaces {old!r}, which is not in the block (update the marker)")
            code = code.replace(old, new)
        return code


def parse_marker(text: str, where: str) -> Dict[str, object]:
    """The directives of one ``<!-- example: ... -->`` comment."""
    out: Dict[str, object] = {"replace": []}
    skip = re.search(r"(?:^|\s)skip\b(.*)\Z", text, re.S)  # the reason is free text up to the end
    if skip:
        reason = " ".join(skip.group(1).split())
        if reason.startswith("(") and reason.endswith(")"):
            reason = reason[1:-1]
        if not reason:
            raise ValueError(f"{where}: 'skip' needs a reason")
        out["skip"] = reason
        text = text[: skip.start()]
    tokens = shlex.split(text)
    i = 0
    while i < len(tokens):
        word = tokens[i]
        if word == "replace" and i + 2 < len(tokens):
            out["replace"].append((tokens[i + 1], tokens[i + 2]))  # type: ignore[union-attr]
            i += 3
        elif word in ("exit", "timeout") and i + 1 < len(tokens) and tokens[i + 1].isdigit():
            out[word] = int(tokens[i + 1])
            i += 2
        else:
            raise ValueError(f"{where}: unknown example directive {word!r} in {text.strip()!r}")
    return out


def parse_page(page: Path) -> List[Example]:
    text = page.read_text()
    examples = []
    for m in FENCE.finditer(text):
        language = LANGUAGES.get(m.group(2).lower())
        if language is None:
            continue
        line = text.count("\n", 0, m.start()) + 1
        ex = Example(page, line, language, textwrap.dedent(m.group(3)))
        before = text[: m.start()].rstrip()
        if before.endswith("-->"):
            comment = MARKER.match(before[before.rfind("<!--"):])
            if comment:
                for key, value in parse_marker(comment.group(1), ex.id).items():
                    setattr(ex, key, value)
        examples.append(ex)
    return examples


EXAMPLES = {page: parse_page(page) for page in PAGES}
ALL = [(page, i) for page in PAGES for i in range(len(EXAMPLES[page]))]


# --------------------------------------------------------------------------
# the miniature ../shared and the working copies


def _split_records(path: Path):
    """(name, lines) per image of a wider_face_split *_bbx_gt.txt file."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        count = int(lines[i + 1])
        n = max(count, 1)  # a count of 0 is followed by one line of zeros
        yield name, lines[i : i + 2 + n]
        i += 2 + n


def _mini_root(src: Path, dst: Path, split: str, per_event: int, events: Optional[int], side: int) -> Dict[str, float]:
    """The first ``per_event`` photos of each event, downsized, with their split records: ``{name: scale}``."""
    import cv2

    split_file = src / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    if not split_file.is_file():
        return {}
    kept_lines, kept, per = [], {}, {}
    for name, record in _split_records(split_file):
        event = name.split("/")[0]
        if events is not None and event not in per and len(per) >= events:
            continue
        if per.get(event, 0) >= per_event:
            continue
        image = cv2.imread(str(src / f"WIDER_{split}" / "images" / name))
        if image is None:
            continue
        per[event] = per.get(event, 0) + 1
        scale = min(1.0, side / max(image.shape[:2]))
        target = dst / f"WIDER_{split}" / "images" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
        boxes = []
        for line in record[2:]:
            v = line.split()
            if int(record[1]) > 0:
                v[:4] = [str(round(float(x) * scale)) for x in v[:4]]
            boxes.append(" ".join(v))
        kept_lines += record[:2] + boxes
        kept[name] = scale
    (dst / "wider_face_split").mkdir(parents=True, exist_ok=True)
    (dst / "wider_face_split" / split_file.name).write_text("\n".join(kept_lines) + "\n")
    return kept


def _named_val_photos() -> set:
    """WIDER_val photos the pages name (e.g. the README picture's), kept in the miniature."""
    names = set()
    for page in PAGES:
        for m in re.finditer(r"WIDER_val/images/([^/\s`]+/[^/\s`]+\.jpg)", page.read_text()):
            names.add(m.group(1))
    return names


@pytest.fixture(scope="session")
def mini_shared(tmp_path_factory):
    """``<tmp>/shared``: a small WIDER FACE (train + val + ground truth), a small extra root, the fixtures."""
    shared = tmp_path_factory.mktemp("docs_examples") / "shared"
    data = shared / "data"
    data.mkdir(parents=True)
    status = {"wider": False, "fixtures": False, "weights": False}
    src = wider_root()
    if (src / "WIDER_val" / "images").is_dir() and (src / "ground_truth").is_dir():
        import numpy as np

        from dsfd.evaluation.wider import WiderGroundTruth, load_wider_ground_truth, save_wider_ground_truth

        mini = data / "widerface"
        _mini_root(src, mini, "train", per_event=4, events=None, side=320)
        val = _mini_root(src, mini, "val", per_event=1, events=None, side=160)  # accuracy mode: 11 passes up to 3x
        gt = load_wider_ground_truth(src / "ground_truth")
        idx = [i for i, (e, n) in enumerate(zip(gt.events, gt.names)) if f"{e}/{n}.jpg" in val]
        save_wider_ground_truth(
            WiderGroundTruth(
                events=[gt.events[i] for i in idx], names=[gt.names[i] for i in idx],
                boxes=[np.round(gt.boxes[i] * val[f"{gt.events[i]}/{gt.names[i]}.jpg"]) for i in idx],
                keep={s: [k[i] for i in idx] for s, k in gt.keep.items()},
            ),
            mini / "ground_truth",
        )
        for name in _named_val_photos() - set(val):  # full size, outside the ground truth (nothing scores them)
            target = mini / "WIDER_val" / "images" / name
            if (src / "WIDER_val" / "images" / name).is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(src / "WIDER_val" / "images" / name)
        extra = src.parent / "widerface_extra"
        if extra.is_dir():
            _mini_root(extra, data / "widerface_extra", "train", per_event=2, events=2, side=320)
        status["wider"] = True
    if fixtures_root().is_dir():
        (shared / "fixtures").symlink_to(fixtures_root())
        status["fixtures"] = True
    weights = repo_root().parent / "shared" / "weights"  # pretrained files to start a backbone from
    status["weights"] = weights.is_dir()
    if status["weights"]:
        (shared / "weights").symlink_to(weights)
    if fddb_root().is_dir():
        (data / "fddb").symlink_to(fddb_root())
    return shared, status


def _working_files() -> List[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the package and the entry points
        skip = {".git", ".venv", "build", "runs", "detections", "exports", "__pycache__"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not (set(p.relative_to(ROOT).parts) & skip) and p.suffix not in (".so", ".pyc")]


def _make_inputs(main: Path) -> None:
    """``photos/`` (three photos) and ``clip.mp4`` (2 s, 10 frames/s): the user's own inputs in the examples."""
    import cv2
    import numpy as np

    photos = main / "photos"
    photos.mkdir()
    hopper = cv2.imread(str(main / "dsfd" / "assets" / "grace_hopper.jpg"))
    shutil.copy(main / "dsfd" / "assets" / "grace_hopper.jpg", photos / "grace_hopper.jpg")
    cv2.imwrite(str(photos / "grace_hopper_small.jpg"), cv2.resize(hopper, None, fx=0.5, fy=0.5))
    cv2.imwrite(str(photos / "grace_hopper_flipped.png"), hopper[:, ::-1])
    frame = cv2.resize(hopper, (320, 240)) if hopper.shape[1] > hopper.shape[0] else cv2.resize(hopper, (240, 320))
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(main / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    for t in range(20):
        writer.write(np.roll(frame, 3 * t, axis=1))
    writer.release()


class PageRun:
    """One page's working copy and which of its blocks have run."""

    def __init__(self, page: Path, base: Path, shared: Path, status: Dict[str, bool]):
        self.page, self.status = page, status
        self.main = base / "main"
        for rel in _working_files():
            src = ROOT / rel
            if src.is_file():
                (self.main / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, self.main / rel)
        for ext in (ROOT / "dsfd").glob("_C*.so"):  # the built extension (ignored by git)
            (self.main / "dsfd" / ext.name).symlink_to(ext)
        (self.main / ".venv").symlink_to(Path(sys.prefix))
        (base / "shared").symlink_to(shared)
        _make_inputs(self.main)
        self.env = dict(os.environ)
        self.env.update(
            PATH=f"{self.main / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            DSFD_WIDER_ROOT=str(base / "shared" / "data" / "widerface"),
            DSFD_FDDB_ROOT=str(base / "shared" / "data" / "fddb"),
            DSFD_FIXTURES_ROOT=str(base / "shared" / "fixtures"),
            TORCH_HOME=str(self.main / ".torch_home"),
        )
        self.outcome: Dict[int, str] = {}

    def missing_data(self, ex: Example) -> Optional[str]:
        if "../shared/data" in ex.code and not self.status["wider"]:
            return f"needs the WIDER FACE data at {wider_root()} (DSFD_WIDER_ROOT)"
        if "../shared/fixtures" in ex.code and not self.status["fixtures"]:
            return f"needs the test fixtures at {fixtures_root()} (DSFD_FIXTURES_ROOT)"
        if "../shared/weights" in ex.code and not self.status["weights"]:
            return f"needs the pretrained files at {repo_root().parent / 'shared' / 'weights'}"
        return None

    def run(self, index: int, monkeypatch) -> None:
        examples = EXAMPLES[self.page]
        for i in range(index):  # what this block may build on
            if i not in self.outcome:
                self._run_one(examples[i], i, monkeypatch, quiet=True)
            if self.outcome[i] == "failed":
                pytest.fail(f"{examples[index].id} not run: the earlier example {examples[i].id} failed")
        self._run_one(examples[index], index, monkeypatch, quiet=False)

    def _run_one(self, ex: Example, index: int, monkeypatch, quiet: bool) -> None:
        reason = ex.skip or self.missing_data(ex)
        if reason:
            self.outcome[index] = "skipped"
            if not quiet:
                pytest.skip(f"{ex.id}: {reason}")
            return
        self.outcome[index] = "failed"
        if ex.language == "python":
            self._python(ex, monkeypatch)
        else:
            self._shell(ex)
        self.outcome[index] = "passed"

    def _python(self, ex: Example, monkeypatch) -> None:
        code = "\n" * ex.line + ex.runnable_code()  # tracebacks name the page and its line numbers
        with monkeypatch.context() as m:
            m.chdir(self.main)
            for key in ("DSFD_WIDER_ROOT", "DSFD_FDDB_ROOT", "DSFD_FIXTURES_ROOT", "TORCH_HOME"):
                m.setenv(key, self.env[key])
            m.setattr(sys, "path", [str(self.main), *sys.path])  # as `python` started in the repository root
            exec(compile(code, str(ex.page), "exec"), {"__name__": "__main__"})

    def _shell(self, ex: Example) -> None:
        code = ex.runnable_code()
        if ex.language == "console":
            commands = []
            for line in re.sub(r"\\\n\s*", " ", code).splitlines():
                if line.startswith("$ "):
                    commands.append(line[2:])
            assert commands, f"{ex.id}: a console block needs '$ ' command lines"
        else:
            commands = [code]
        for n, command in enumerate(commands):
            expected = ex.exit if n == len(commands) - 1 else 0
            try:
                proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=self.main, env=self.env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=ex.timeout)
            except subprocess.TimeoutExpired as e:
                pytest.fail(f"{ex.id}: still running after {ex.timeout} s\n--- block ---\n{command}\n"
                            f"--- output ---\n{(e.output or '')[-4000:]}")
            if proc.returncode != expected:
                pytest.fail(f"{ex.id}: exit code {proc.returncode} (expected {expected})\n--- block as run ---\n"
                            f"{command}\n--- output (end) ---\n{proc.stdout[-6000:]}")


@pytest.fixture(scope="session")
def page_runs(mini_shared, tmp_path_factory):
    shared, status = mini_shared
    runs: Dict[Path, PageRun] = {}

    def get(page: Path) -> PageRun:
        if page not in runs:
            runs[page] = PageRun(page, tmp_path_factory.mktemp(page.stem), shared, status)
        return runs[page]

    return get


@pytest.mark.parametrize("page,index", ALL, ids=[EXAMPLES[p][i].id for p, i in ALL])
def test_example_runs(page, index, page_runs, monkeypatch):
    page_runs(page).run(index, monkeypatch)


# --------------------------------------------------------------------------
# the pages themselves


def test_markers_are_well_formed():
    """Every marker parses (unknown directives fail here, not silently) and is followed by an example."""
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"<!--\s*example:(.*?)-->", text, re.S):
            parse_marker(m.group(1), f"{page.name}:{text.count(chr(10), 0, m.start()) + 1}")
            after = text[m.end():].lstrip("\n ")
            lang = re.match(r"```([\w+-]*)", after)
            assert lang and LANGUAGES.get(lang.group(1).lower()), f"{page.name}: a marker must stand right before an example block"


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is over 250 lines: move reference material to docs/"
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
        assert "README.md" in page.read_text(), f"docs/{page.name} does not link back to the README"


def test_relative_links_resolve():
    """Links to files of the repository (pages, images, scripts) point at files that exist."""
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"


def test_readme_names_the_ci_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text() and "bash scripts/test.sh" in ci
