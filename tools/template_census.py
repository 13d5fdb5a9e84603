"""Template calls in a MediaWiki dump, and gap-looking sentences in r1s corpora built from it.

    python3 tools/template_census.py DUMP.xml[.bz2] [--top 50] [--corpus-jsonl BEFORE.jsonl AFTER.jsonl]

Counts every `{{name` call (any depth; `{{{params}}}` excluded) by normalised name, and top-level calls
that r1s renders (crates/r1s-corpus/src/templates.rs RENDERED) vs drops. With two `r1s corpus export`
files of the same dump (e.g. built before and after a cleaner change), counts passages' "dangling
gaps": a preposition followed by punctuation (`At, the`) or by a dimension word (`to above`).
"""
import argparse, bz2, collections, json, re, sys

RENDERED = {"convert", "cvt", "nihongo", "lang", "nowrap", "nobr", "circa", "c.", "start date", "end date",
            "birth date", "death date", "start date and age", "birth date and age", "death date and age", "frac",
            "height", "sortname", "small", "ill", "as of", "abbr", "mvar", "ndash", "mdash", "blockquote", "quote", "spaces", "em"}
GAP = re.compile(r"\b(?:[Aa]t|to|of|from|about|approximately|around|nearly|over|under|some|by|between|measures|measuring)"
                 r"(?:\s*[,.;:)]|\s+(?:above|below|high|long|wide|tall|deep|in length|in diameter)\b)")


def norm(name):
    name = name.strip()
    if name.lower().startswith("template:"):
        name = name[9:]
    return " ".join(name.replace("_", " ").split()).lower()


def census(text):
    calls, top = collections.Counter(), collections.Counter()
    depth, i, n = 0, 0, len(text)
    while i < n:
        j = text.find("{{", i)
        k = text.find("}}", i)
        if j < 0 and k < 0:
            break
        if j >= 0 and (k < 0 or j < k):
            if text.startswith("{{{", j):
                depth += 1
                i = j + 3
                continue
            m = re.match(r"([^|{}]*)", text[j + 2:j + 202])
            name = norm(m.group(1)) if m else ""
            if name and not name.startswith("#") and ":" not in name:
                calls[name] += 1
                if depth == 0:
                    top[name] += 1
            depth += 1
            i = j + 2
        else:
            depth = max(0, depth - 1)
            i = k + 2
    return calls, top


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--top", type=int, default=50)
    ap.add_argument("--corpus-jsonl", nargs=2, metavar=("BEFORE", "AFTER"))
    a = ap.parse_args()
    opener = bz2.open if a.dump.endswith(".bz2") else open
    with opener(a.dump, "rt", encoding="utf-8") as f:
        text = f.read()
    calls, top = census(text)
    rendered = sum(c for name, c in top.items() if name in RENDERED or name.startswith("lang-"))
    print(f"{sum(calls.values())} template calls ({len(calls)} names); top-level {sum(top.values())}: "
          f"{rendered} rendered, {sum(top.values()) - rendered} dropped")
    for name, c in calls.most_common(a.top):
        mark = "rendered" if name in RENDERED or name.startswith("lang-") else ""
        print(f"  {c:7d}  {name:40s} {mark}")
    if a.corpus_jsonl:
        for label, path in zip(("before", "after"), a.corpus_jsonl):
            gaps, examples = 0, []
            for line in open(path, encoding="utf-8"):
                c = json.loads(line)["contents"]
                for m in GAP.finditer(c):
                    gaps += 1
                    if len(examples) < 3:
                        examples.append(c[max(0, m.start() - 30):m.end() + 20].replace("\n", " "))
            print(f"dangling gaps {label}: {gaps}   e.g. {examples}")


if __name__ == "__main__":
    sys.exit(main())
