"""Per-crate line coverage from cargo-tarpaulin's JSON report (product sources only)."""
import collections
import json
import sys

CRATES = {
    "wal": "keel-wal",
    "recovery": "keel-recovery",
    "engine": "keel",
    "cli": "keel-cli",
    "raft": "keel-raft",
}

report = json.load(open(sys.argv[1]))
covered = collections.Counter()
coverable = collections.Counter()
for entry in report["files"]:
    path = "/".join(entry["path"])
    for folder in CRATES:
        if f"/{folder}/src/" in path:
            covered[folder] += entry["covered"]
            coverable[folder] += entry["coverable"]
print("| crate | lines covered | coverable | coverage |")
print("|---|---:|---:|---:|")
for folder, name in CRATES.items():
    if coverable[folder]:
        share = 100 * covered[folder] / coverable[folder]
        print(f"| {name} | {covered[folder]} | {coverable[folder]} | {share:.1f}% |")
total_covered, total = sum(covered.values()), sum(coverable.values())
if total:
    print(f"coverage: {total_covered}/{total} lines of the {len(CRATES)} crates' sources, {100 * total_covered / total:.1f}%")
