"""Checks that the laptop-side shell scripts stay within bash 3.2 and BSD userland (macOS).

    python tools/check_portability.py [FILE ...]   (default: the laptop-side scripts below)

macOS ships bash 3.2 and BSD tools; nothing in CI runs them, so this check is a list of what bash 4+
and GNU added that the scripts must not use, matched line by line (comments and heredoc text that
only prints are skipped). It is no proof: shellcheck checks the syntax, this checks the known traps,
and docs/remote_tensorboard.md says what is verified and what is not. scripts/serve_tb_remote.sh is
not checked: it runs on the (Linux) server.
Exit status 0 when nothing is found, 1 otherwise (each finding as FILE:LINE: what, and why).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"  # the user tools it checks
LAPTOP_SIDE = ["serve_tb.sh", "serve_tb_session.sh", "common.sh", "tunnel.sh", "tb.sh"]

# (pattern, what it is, why it breaks on macOS)
RULES = [
    (r"\b(declare|local|typeset)\s+-[a-zA-Z]*A", "associative array", "bash 4"),
    (r"\b(declare|local|typeset)\s+-[a-zA-Z]*n\b", "nameref", "bash 4.3"),
    (r"\b(declare|local|typeset)\s+-[a-zA-Z]*g\b", "declare -g", "bash 4.2"),
    (r"\b(mapfile|readarray|coproc)\b", "mapfile/readarray/coproc", "bash 4"),
    (r"\$\{[#!]?\w+(\[[^]]*\])?(,,?|\^\^?)[^}]*\}", "case conversion ${x,,} ${x^^}", "bash 4"),
    (r"\$\{\w+@[QEPAKaUuL]\}", "${x@Q} transformations", "bash 4.4"),
    (r"\$\{\w+\[-\d+\]\}", "negative array index", "bash 4.3"),
    (r"&>>|\|&", "&>> or |&", "bash 4"),
    (r";;&|;&\s*$", "case fall-through ;& ;;&", "bash 4"),
    (r"\{\w+\}[<>]", "{fd}> file-descriptor variable", "bash 4.1"),
    (r"\bwait\s+-[a-z]*n", "wait -n", "bash 4.3"),
    (r"\$\{?(BASHPID|EPOCHSECONDS|EPOCHREALTIME|READLINE_\w+)\b", "bash 4/5 variable", "bash 4+"),
    (r"\[\[\s+-v\s", "[[ -v var ]]", "bash 4.2"),
    (r"\bread\b[^|;&]*\s-[a-zA-Z]*[Ni]\b", "read -N / read -i", "bash 4"),
    (r"\bread\b[^|;&]*-t\s+['\"]?\d*\.\d", "read -t with a fraction", "bash 3.2 takes whole seconds"),
    (r"printf\s+(-v\s+\w+\s+)?['\"][^'\"]*%\(", "printf %(...)T", "bash 4.2"),
    (
        r"\bshopt\s+-s\s+(globstar|lastpipe|autocd|direxpand|globasciiranges|checkjobs)",
        "shopt option",
        "bash 4",
    ),
    (r"\bsed\b[^|;]*\s-[a-zA-Z]*[ir]\b", "sed -i / sed -r", "GNU sed (BSD: -i '' and -E)"),
    (r"\bgrep\b[^|;]*\s-[a-zA-Z]*P", "grep -P", "GNU grep"),
    (r"\breadlink\s+-[a-z]*f", "readlink -f", "GNU (macOS before 12.3)"),
    (r"\bdate\b[^|;]*\s-d\b|\bdate\s+--", "date -d / date --option", "GNU date"),
    (r"\bstat\s+(-c|--)", "stat -c", "GNU stat (BSD: stat -f)"),
    (r"\b(timeout|tac|nproc|sha256sum|md5sum|realpath)\b\s", "GNU-only command", "not on macOS"),
    (r"\bxargs\s+-[a-z]*r", "xargs -r", "GNU xargs"),
    (r"\bfind\b[^|;]*-(printf|regextype)\b", "find -printf", "GNU find"),
    (r"\bsort\s+[^|;]*-V\b", "sort -V", "GNU sort"),
    (r"\bhead\s+-[nc]\s*-\d", "head -n -N", "GNU head"),
    (r"\b(du\s+-[a-z]*b|base64\s+-[dw]|mktemp\s+--|ls\s+--[a-z])", "GNU-only option", "GNU coreutils"),
    (r"\bsleep\s+\d+(\.\d+)?[smhd]\b", "sleep with a unit", "GNU sleep"),
    (r"\becho\s+-e\b", "echo -e", "differs between shells: use printf"),
    (r"\b(ss|ip|lsof)\s+-", "Linux network tool", "not on macOS (use bash's /dev/tcp)"),
    (r"/proc/", "/proc", "no /proc on macOS"),
]


def findings(path: Path) -> list[str]:
    found = []
    heredoc_end = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for pattern, what, why in RULES:
            if re.search(pattern, code):
                found.append(f"{path}:{number}: {what} ({why}): {line.strip()}")
        # Text of `cat <<EOF` (usage) is printed, not run: skip it.
        match = re.search(r"\bcat\s+<<-?\s*['\"]?(\w+)", code)
        if match:
            heredoc_end = match.group(1)
    return found


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] or [SCRIPTS / name for name in LAPTOP_SIDE]
    problems = [problem for path in paths for problem in findings(path)]
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} construct(s) that bash 3.2 or BSD userland (macOS) lack", file=sys.stderr)
        return 1
    print(
        f"portable to bash 3.2 + BSD userland (by the rules in {Path(__file__).name}): {len(paths)} file(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
