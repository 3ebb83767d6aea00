"""DNS names and Cilium's `matchName` / `matchPattern` semantics (pure; no I/O here).

Cilium (pkg/fqdn/matchpattern, pkg/fqdn/dnsproxy CheckAllowed; policy-semantics.md §8):
- names are compared lower-cased and fully qualified (trailing dot);
- `matchName` is a literal name;
- `matchPattern` allows `[-a-zA-Z0-9_.*]`, at most 255 characters; `*` (any run of `*`) is
  zero or more DNS characters `[-a-zA-Z0-9_]` and never crosses a dot; a pattern made only of
  `*` (optionally followed by `.`) matches every well-formed name; a LEADING `**.` matches one
  or more whole labels (Cilium 1.19, PR #43420). `**` anywhere else behaves like `*` (merged
  Cilium code; an unmerged PR gives it multi-label meaning — we follow the merged code, see README).
Regexes are RE2 (linear time) and matched against the whole name.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import re2

MAX_NAME_CHARS = 255  # RFC 1035 §2.3.4 (wire length); Cilium caps patterns at 255 too
MAX_LABEL_CHARS = 63  # RFC 1035 §2.3.4
# Names checked (valid? matched by a pattern set?) are remembered: pods ask the same names
# over and over, and each check runs for every query and again for every answer that teaches
# IPs (is_valid_name ~1.5 µs, an RE2 call from Python ~3 µs).
VALID_NAME_CACHE = 16384  # names of up to 255 chars: a few MB at most when a pod sprays names
_PATTERN_CHARS = re.compile(r"[-a-zA-Z0-9_.*]+")  # fixed, trusted regex: stdlib is fine here
_NAME_CHARS = re.compile(r"[-a-z0-9_]+(\.[-a-z0-9_]+)*\.|\.")
_LABEL_RE = "[-a-zA-Z0-9_]"
ALL_NAMES_REGEX = r"(?:[-a-zA-Z0-9_]+[.])+|[.]"  # Cilium: "(^([-a-zA-Z0-9_]+[.])+$)|(^[.]$)"


def _re2_options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print parse errors on stderr; we raise instead
    return opts


RE2_OPTIONS = _re2_options()


class DnsNameError(ValueError):
    """A name or pattern that Cilium would reject."""


def normalize_name(name: str) -> str:
    """Lower-case and fully qualify a DNS name (`API.Stripe.com` -> `api.stripe.com.`)."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


@functools.lru_cache(maxsize=VALID_NAME_CACHE)
def is_valid_name(name: str) -> bool:
    """True for a normalized name made of DNS characters with sane lengths."""
    if len(name) > MAX_NAME_CHARS or not _NAME_CHARS.fullmatch(name):
        return False
    return all(len(label) <= MAX_LABEL_CHARS for label in name.split(".")[:-1])


def validate_match_name(name: str) -> str:
    """Return the normalized literal for `matchName`, or raise DnsNameError."""
    norm = normalize_name(name)
    if not norm.strip(".") or not is_valid_name(norm):
        raise DnsNameError(f"invalid DNS name {name!r}")
    return norm


def pattern_to_regex(pattern: str) -> str:
    """Translate a `matchPattern` into an RE2 regex for a full match on a normalized name."""
    pat = pattern.strip().lower()
    if not pat or len(pat) > MAX_NAME_CHARS or not _PATTERN_CHARS.fullmatch(pat):
        raise DnsNameError(f"invalid matchPattern {pattern!r}: only [-a-zA-Z0-9_.*] allowed")
    if pat.rstrip(".").strip("*") == "" and pat.count(".") <= 1 and not pat.startswith("."):
        return ALL_NAMES_REGEX
    if not pat.endswith("."):
        pat += "."
    prefix = ""
    m = re.match(r"\*{2,}\.", pat)
    if m:
        prefix = f"(?:{_LABEL_RE}+[.])+"
        pat = pat[m.end():]
    parts: list[str] = []
    for token in re.split(r"(\*+)", pat):
        if not token:
            continue
        parts.append(f"{_LABEL_RE}*" if token.startswith("*") else re.escape(token))
    return prefix + "".join(parts)


@dataclass(frozen=True, slots=True)
class NameMatcher:
    """A compiled `matchName`/`matchPattern` set (OR of all). Empty matches nothing."""

    names: frozenset[str]
    regex_source: str | None  # the alternation of all patterns, None when there are none
    match_all: bool = False

    def matches(self, name: str) -> bool:
        """`name` must already be normalized (lower-case, trailing dot)."""
        if self.match_all:
            return is_valid_name(name)
        if name in self.names:
            return True
        if self.regex_source is None:
            return False
        return _pattern_matches(self.regex_source, name)


_CACHE: dict[str, re2._Regexp] = {}


@functools.lru_cache(maxsize=VALID_NAME_CACHE)
def _pattern_matches(source: str, name: str) -> bool:
    """A pattern set's verdict on a name, remembered: the same names come back with every
    query and every answer, and one RE2 call from Python costs ~3 µs (learning an answer
    spent more time here than anywhere else, py-spy under dnsperf in the sandbox)."""
    return _compiled(source).fullmatch(name) is not None


def _compiled(source: str) -> re2._Regexp:
    # Compiled once per distinct source: a snapshot's matchers share the same objects.
    rx = _CACHE.get(source)
    if rx is None:
        rx = re2.compile(source, options=RE2_OPTIONS)
        _CACHE[source] = rx
    return rx


def build_matcher(match_names: list[str], match_patterns: list[str]) -> NameMatcher:
    """Compile names and patterns; raises DnsNameError naming the first bad one."""
    names = frozenset(validate_match_name(n) for n in match_names)
    regexes = [pattern_to_regex(p) for p in match_patterns]
    if ALL_NAMES_REGEX in regexes:
        return NameMatcher(names=names, regex_source=None, match_all=True)
    source = "|".join(f"(?:{r})" for r in regexes) if regexes else None
    if source is not None:
        _compiled(source)
    return NameMatcher(names=names, regex_source=source)
