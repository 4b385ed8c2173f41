"""Markdown table of benchmark results: python benchmarks/table.py benchmarks/results/FILE.jsonl"""

import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| command | plain img/s | method img/s | ratio | pipeline img/s | peak MiB |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| `{r['command'].replace(' --json', '')}` | {r.get('plain_img_s', '')} | {r.get('method_img_s', '')} | "
          f"{r.get('ratio', '')} | {r.get('pipeline_img_s', '')} | {r.get('peak_memory_mib', '')} |")
if rows:
    print(f"\nMachine: {rows[0]['machine']}; date: {rows[0]['date']}.")
