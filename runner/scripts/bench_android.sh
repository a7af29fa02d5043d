#!/usr/bin/env bash
# Benchmark a mobilepeft ExecuTorch bundle on an Android phone over adb with the native runner.
#
#   runner/scripts/bench_android.sh RUNNER BUNDLE_DIR [OUT.json] [-- bench options]
#
# RUNNER is the arm64 build of mobilepeft_runner (docs/mobile.md, "Native runner on Android");
# a libc++_shared.so beside it is pushed too. The bundle is pushed once per content (its manifest's
# hash names the remote copy), the runner's `bench` runs on the phone and the result JSON (the keys
# of docs/mobile.md, "device" naming the phone) is pulled to OUT.json (default bench-android.json).
# The runner's verification stamps stay on the phone (/data/local/tmp/mobilepeft/cache), so a bundle
# verified there once is not hashed again (docs/mobile.md, "Verifying a bundle before it runs").
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
runner=$1 bundle=$2 out=${3:-bench-android.json}
shift $(( $# >= 3 ? 3 : 2 ))
[ "${1:-}" = "--" ] && shift
[ -x "$runner" ] || { echo "error: $runner is not an executable runner build" >&2; exit 1; }
[ -f "$bundle/manifest.json" ] || { echo "error: $bundle has no manifest.json (export it with mobilepeft export executorch)" >&2; exit 1; }
command -v adb >/dev/null || { echo "error: adb not found (Android SDK platform-tools)" >&2; exit 1; }
[ "$(adb get-state 2>/dev/null)" = "device" ] || { echo "error: no phone connected (adb devices), or it is not authorised" >&2; exit 1; }

remote=/data/local/tmp/mobilepeft
tag=$(sha256sum "$bundle/manifest.json" | cut -c1-12)
adb shell mkdir -p "$remote/bundle-$tag"
if [ -z "$(adb shell ls "$remote/bundle-$tag/manifest.json" 2>/dev/null | tr -d '\r' | grep manifest || true)" ]; then
  echo "pushing $bundle -> $remote/bundle-$tag"
  adb push "$bundle/." "$remote/bundle-$tag/" >/dev/null
fi
adb push "$runner" "$remote/mobilepeft_runner" >/dev/null
libcxx="$(dirname "$runner")/libc++_shared.so"
[ -f "$libcxx" ] && adb push "$libcxx" "$remote/" >/dev/null
adb shell chmod 755 "$remote/mobilepeft_runner"
echo "running: mobilepeft_runner bench --bundle bundle-$tag $*"
adb shell "cd $remote && LD_LIBRARY_PATH=$remote XDG_CACHE_HOME=$remote/cache ./mobilepeft_runner bench --bundle bundle-$tag --output result.json $*"
adb pull "$remote/result.json" "$out" >/dev/null
echo "result: $out"
