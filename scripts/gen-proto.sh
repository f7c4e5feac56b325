#!/usr/bin/env bash
# Regenerates proto/csi.proto from the protobuf blocks of the CSI specification.
# The specification defines the wire contract inside ```protobuf fences; this
# script concatenates them in order, exactly as written there.
set -euo pipefail
spec="${1:-$(dirname "$0")/../../shared/reference/csi-spec-v1.12.0.md}"
out="$(dirname "$0")/../proto/csi.proto"
{
  echo "// Code generated from the CSI specification v1.12.0 (scripts/gen-proto.sh)."
  echo "// Do not edit: regenerate from the specification instead."
  awk '/^```protobuf$/ {inside=1; next} /^```$/ && inside {inside=0; print "////////"; next} inside {print}' "$spec"
} > "$out"
echo "wrote $out"
