"""Small pieces every benchmark script shares: output paths, SIGTERM, progress, results files."""

import json
import signal
from pathlib import Path


def out_stem(out):
    """``--out`` without a ``.json``/``.md`` suffix: both files are written next to each other."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".json", ".md") else out


def raise_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so ``finally`` blocks stop every process the run started."""
    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)


def say(msg):
    """Progress line, flushed at once (the scripts often run with stdout in a pipe)."""
    print(msg, flush=True)


def write_results(stem, report, markdown, indent=1):
    """Write ``stem``.json (the report) and ``stem``.md; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=indent) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path
