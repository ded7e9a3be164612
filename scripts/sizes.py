#!/usr/bin/env python3
"""The size rule of the codebase: no source file outside tests longer than LIMIT_FILE
lines, no function longer than LIMIT_FN lines (unit-test modules and integration tests
aside). Prints what breaks it, longest first; exits 1 if anything does, unless it is
listed in ALLOWED with the reason it stays long."""
import os, re, sys

LIMIT_FILE, LIMIT_FN = 700, 120
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
# path or path::function -> why it stays as it is
ALLOWED = {
    'shared/src/store/schema.rs::create_table':
        'the table definition, declared in one piece: keys, both indexes, stream and TTL',
    'shared/kubernetes/src/lib.rs::worker_pod':
        "the taskhost pod's spec, declared in one piece as Kubernetes reads it",
}

def sources():
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in ('target', '.git', 'node_modules', 'tests')]
        for f in files:
            if f.endswith('.rs'):
                yield os.path.relpath(os.path.join(top, f), ROOT)

def code_lines(path):
    """The file's lines up to its unit-test module."""
    lines = open(os.path.join(ROOT, path)).read().split('\n')
    for i, l in enumerate(lines):
        if l.startswith('#[cfg(test)]'):
            return lines[:i]
    return lines

def functions(lines):
    out = []
    for i, l in enumerate(lines):
        m = re.match(r'\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:const\s+)?fn\s+(\w+)', l)
        if not m or l.rstrip().endswith(';'):
            continue
        depth, started = 0, False
        for j in range(i, len(lines)):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j]).split('//')[0]
            depth += code.count('{') - code.count('}')
            started = started or '{' in code
            if started and depth <= 0:
                out.append((m.group(1), i + 1, j - i + 1))
                break
    return out

bad = []
for path in sorted(sources()):
    lines = code_lines(path)
    if len(lines) > LIMIT_FILE and path not in ALLOWED:
        bad.append((len(lines), f'{path}: {len(lines)} lines (limit {LIMIT_FILE})'))
    for name, line, n in functions(lines):
        if n > LIMIT_FN and f'{path}::{name}' not in ALLOWED:
            bad.append((n, f'{path}:{line}: fn {name} is {n} lines (limit {LIMIT_FN})'))
for _, text in sorted(bad, reverse=True):
    print(text)
if bad:
    sys.exit(1)
print(f'sizes: no file over {LIMIT_FILE} lines, no function over {LIMIT_FN}')
