#!/usr/bin/env bash
# ClusterNS's layout (djz233/ClusterNS: `bash run_prompt.sh` from the repository root). The recipe itself is
# scripts/run_prompt.sh: the same configurations, --dry_run and environment overrides; run from the repository root.
exec bash "$(dirname "$0")/scripts/run_prompt.sh" "$@"
