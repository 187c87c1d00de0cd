# Sourced (from the repository root) by bench/gpu_check.sh and examples/paper_gpu.sh: makes
# "$py -m alft_cli" work on a machine that has its own torch but no pydantic and no installed
# alft (the lent GPU machine; see bench/README.md "GPU check"). alft_cli comes from this
# checkout; if it does not import, the wheels carried in $ALFT_CARRY/wheels (filled here by
# bench/gpu_prepare.py) are installed into $ALFT_SITE, without index or network.
# Sets: py (the interpreter), PYTHONPATH, ALFT_INSTALLED_WHEELS (what was installed).
py=${PYTHON:-python3}
carry=${ALFT_CARRY:-.gpu-carry}
site=${ALFT_SITE:-/tmp/alft-site}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ALFT_INSTALLED_WHEELS=""
if ! "$py" -c 'import alft_cli.config, alft_cli.cli' 2>/dev/null; then
  shopt -s nullglob
  wheels=("$carry"/wheels/*.whl)
  shopt -u nullglob
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "error: alft_cli does not import with $py and $carry/wheels holds no wheels" \
         "(run bench/gpu_prepare.py where pip works, and carry $carry)"
  else
    echo "installing ${#wheels[@]} carried wheels into $site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "${wheels[@]}" || echo "error: installing the carried wheels failed"
    # Before the interpreter's own site-packages: a carried typing_extensions replaces an
    # older one there.
    export PYTHONPATH="$site:$PYTHONPATH"
    ALFT_INSTALLED_WHEELS=$(for w in "${wheels[@]}"; do basename "$w"; done | tr '\n' ' ')
  fi
fi
