#!/usr/bin/env bash
# Run the I/O tests against storecomp._native built with AddressSanitizer and
# UndefinedBehaviorSanitizer, or (SANITIZER=thread) with ThreadSanitizer.
#
# Usage:   [SANITIZER=address|thread] scripts/sanitize.sh [SCRATCH_DIR] [pytest args...]
#          (default SCRATCH_DIR: /tmp/sanitize; default pytest args: -q tests/io)
#
# ThreadSanitizer: python is not instrumented, so only races between the
# engine's own threads and code that synchronises through pthreads (the GIL
# included, through the intercepted pthread calls) are seen. Suppressions for
# known-benign reports live in scripts/tsan.supp, each with its reason; none
# may silence libpython's own calls (TSan would then lose the GIL). The fork
# tests skip themselves under TSan (tests/conftest.py UNDER_TSAN).
#
# What it does:
#   1. Copies the working tree (tracked and untracked-but-not-ignored files;
#      no build outputs, no installed .so) into SCRATCH_DIR. The checkout it
#      runs from is never rebuilt, so an editable install there is untouched.
#   2. Builds the extension in place there with STORECOMP_SANITIZE=1
#      (setup.py adds -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined).
#   3. Runs pytest from SCRATCH_DIR (so `import storecomp` is the sanitized
#      copy; checked before the run) with
#        LD_PRELOAD=$(gcc -print-file-name=libasan.so) plus libstdc++.so
#            (python itself is not instrumented; libstdc++ must be loaded
#             before ASan initialises or its __cxa_throw interceptor has no
#             real function to call: "CHECK failed ... real___cxa_throw")
#        ASAN_OPTIONS=detect_leaks=0:...                 (python leaks by design)
#        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
#      Sanitizer reports go to SCRATCH_DIR/sanitizer-logs/ (log_path) as well
#      as stderr; a report makes the process exit non-zero.
#
# Exit status: pytest's, or 1 when any sanitizer log was written.
# Needs: gcc/g++ with libasan and libubsan, pybind11, the test dependencies.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
scratch="${1:-/tmp/sanitize}"
shift || true
if [ "$#" -eq 0 ]; then set -- -q tests/io; fi

case "$scratch" in
  /|"$src"|"$src"/*) echo "sanitize.sh: refusing scratch dir $scratch" >&2; exit 2 ;;
esac

sanitizer="${SANITIZER:-address}"
case "$sanitizer" in
  address) runtime=libasan.so; symbol=__asan_ ;;
  thread) runtime=libtsan.so; symbol=__tsan_ ;;
  *) echo "sanitize.sh: SANITIZER must be address or thread, not $sanitizer" >&2; exit 2 ;;
esac
libsan="$(gcc -print-file-name=$runtime)"
if [ ! -e "$libsan" ] || [ "$libsan" = "$runtime" ]; then
  echo "sanitize.sh: gcc has no $runtime (install the gcc sanitizer runtimes)" >&2
  exit 2
fi

echo "== copying $src -> $scratch"
rm -rf "$scratch"
mkdir -p "$scratch"
(cd "$src" && git ls-files -z --cached --others --exclude-standard) |
  (cd "$src" && xargs -0 cp --parents -t "$scratch" 2>/dev/null || true)
# Files removed from the working tree but still in the index are skipped by cp.
rm -f "$scratch"/storecomp/_native*.so

echo "== building storecomp._native with the $sanitizer sanitizer"
(cd "$scratch" && STORECOMP_SANITIZE=$sanitizer python setup.py -q build_ext --inplace >build.log 2>&1) || {
  tail -50 "$scratch/build.log" >&2
  exit 2
}
so="$(ls "$scratch"/storecomp/_native*.so)"
if ! nm -D "$so" | grep "$symbol" >/dev/null; then
  echo "sanitize.sh: $so is not instrumented" >&2
  exit 2
fi

logs="$scratch/sanitizer-logs"
mkdir -p "$logs"
libstdcxx="$(g++ -print-file-name=libstdc++.so)"
export LD_PRELOAD="$libsan $(readlink -f "$libstdcxx")"
export TSAN_OPTIONS="halt_on_error=0:die_after_fork=0:second_deadlock_stack=1:history_size=4:log_path=$logs/tsan:suppressions=$src/scripts/tsan.supp"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0:allocator_may_return_null=1:log_path=$logs/asan:log_exe_name=1:print_summary=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
export PYTHONDONTWRITEBYTECODE=1
export PYTHONFAULTHANDLER=1

cd "$scratch"
loaded="$(python -c 'import storecomp._native as n; print(n.__file__)')"
if [ "$loaded" != "$so" ]; then
  echo "sanitize.sh: python imports $loaded, not the sanitized $so" >&2
  exit 2
fi
echo "== running pytest $* (sanitized: $so)"
status=0
python -m pytest -p no:cacheprovider "$@" || status=$?

if compgen -G "$logs/*" >/dev/null; then
  echo "== sanitizer reports:"
  for f in "$logs"/*; do
    echo "--- $f"
    cat "$f"
  done
  [ "$status" -ne 0 ] || status=1
else
  echo "== no sanitizer reports"
fi
exit "$status"
