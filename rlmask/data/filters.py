"""Which files of a folder or manifest become images: ``--exclude`` globs and segmentation masks.

Both are applied to relative paths (``benign/benign (1)_mask.png``) after the folder walk, so the cached
index stays the raw listing and changing ``--exclude`` never invalidates it. Every removal is counted,
per pattern, for ``rlmask data info``.
"""

from __future__ import annotations

import fnmatch
import re

from rlmask.errors import UserError

# Segmentation masks stored beside their images: ``x_mask.png``, ``x_mask_1.png`` (BUSI's second lesion),
# ``x_seg.png``, ``x-mask.png``, case-insensitive. Decision: left out by default, with a warning;
# ``--keep-masks`` uses them. A mask silently trained on as an image is worse than a warning to read.
MASK_PATTERNS = ("*_mask.*", "*_mask_N.*", "*_seg.*")
_MASK = re.compile(r"[_-](mask|seg)(_\d+)?\.[^./]+$", re.IGNORECASE)


def looks_like_mask(name: str) -> bool:
    """True for a file name of the form ``*_mask.*``, ``*_mask_<n>.*`` or ``*_seg.*`` (also with ``-``)."""
    return _MASK.search(name) is not None


class FileFilter:
    """Drops files matching ``--exclude`` patterns and mask-like names, counting what each rule removed.

    A pattern matches, case-insensitively, the relative path or any trailing part of it, so
    ``*_mask.png``, ``notumor/*`` and ``Training/glioma/*`` all do what they say. ``*`` also crosses
    folders, as in ``fnmatch``.
    """

    def __init__(self, patterns: list[str], keep_masks: bool):
        self.patterns = list(patterns)
        self._regexes = [re.compile(fnmatch.translate(p.lower().replace("\\", "/"))) for p in self.patterns]
        self.keep_masks = keep_masks
        self.removed = {p: 0 for p in self.patterns}  # pattern -> files removed (first matching pattern)
        self.masks = 0  # mask-like files left out (or, with keep_masks, kept and counted)
        self.mask_examples: list[str] = []

    def keep(self, rel: str) -> bool:
        """Whether the file at relative path ``rel`` (``/``-separated) is used as an image."""
        if self._regexes:
            low = rel.lower()
            parts = low.split("/")
            tails = ["/".join(parts[i:]) for i in range(len(parts))]  # a/b/c.png, b/c.png, c.png
            for pattern, regex in zip(self.patterns, self._regexes):
                if any(regex.match(t) for t in tails):
                    self.removed[pattern] += 1
                    return False
        if looks_like_mask(rel.rsplit("/", 1)[-1]):
            self.masks += 1
            if len(self.mask_examples) < 2:
                self.mask_examples.append(rel)
            return self.keep_masks
        return True

    def report(self) -> dict:
        """Plain data for the pool's info: files removed per pattern and mask-like files seen."""
        return {
            "exclude": dict(self.removed),
            "masks": self.masks,
            "masks_kept": self.keep_masks,
            "mask_examples": list(self.mask_examples),
        }

    def warnings(self) -> list[str]:
        """One-line warnings: masks seen, patterns that matched nothing (a typo?)."""
        out = []
        if self.masks:
            what = "used as images (--keep-masks)" if self.keep_masks else "left out (--keep-masks uses them)"
            out.append(
                f"{self.masks} file(s) look like segmentation masks ({', '.join(MASK_PATTERNS)}, "
                f"e.g. {self.mask_examples[0]}): {what}"
            )
        out += [f"--exclude {p!r} matched no file" for p, n in self.removed.items() if n == 0]
        return out

    def check_not_empty(self, kept: int, spec: str) -> None:
        """UserError when the filters left nothing (naming the patterns that removed files)."""
        if kept:
            return
        removed = [f"{p!r} removed {n}" for p, n in self.removed.items() if n]
        if removed:
            raise UserError(f"--exclude: no image of --data {spec} is left ({'; '.join(removed)})")
        if self.masks and not self.keep_masks:
            raise UserError(
                f"--data {spec}: no image is left: all {self.masks} file(s) look like segmentation "
                "masks (--keep-masks uses them)"
            )
