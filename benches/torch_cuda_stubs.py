#!/usr/bin/env python3
"""Makes PyPI's Linux torch wheel importable on a CPU-only machine without its ~3 GB of
nvidia-* / cuda-toolkit dependencies, for the benchmark baseline (benches/prune.sh).

PyPI serves one Linux x86_64 torch wheel, built with CUDA: libtorch_cpu.so, libtorch_cuda.so
and libtorch_python.so list libcudart, libcublas, libcudnn, libnccl, ... as NEEDED, so
`pip install torch --no-deps` gives an `import torch` that fails at load time. The CPU paths
never call into those libraries. This script writes, into torch/lib (on every torch library's
RPATH as $ORIGIN), one small stub library per missing CUDA library: same SONAME, the same
symbol-version nodes, and every symbol torch's libraries import from it defined as a function
that returns 100 (cudaErrorNoDevice), or a short string for the *GetErrorString/*GetErrorName
family. Static initialisers (__cudaRegisterFatBinary ...) then run harmlessly, and
torch.cuda.is_available() answers False; no CPU kernel is touched.

    torch_cuda_stubs.py      (run with the venv's python; needs readelf and gcc)
"""
import os
import re
import subprocess
import sys
import tempfile


def readelf(*args):
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", readelf("-d", path))


def symbols(path):
    """(defined names, [(undefined name, version or None)]) of a shared library's dynamic table."""
    defined, undefined = set(), []
    for line in readelf("--dyn-syms", path).splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].endswith(":"):
            continue
        name = re.sub(r" \(\d+\)$", "", " ".join(f[7:]))
        base, _, version = name.partition("@")
        version = version.lstrip("@") or None
        if f[6] == "UND":
            if base:
                undefined.append((base, version))
        else:
            defined.add(base)
    return defined, undefined


def version_files(path):
    """version node name -> the library file that must define it (from .gnu.version_r)."""
    out, current = {}, None
    for line in readelf("-V", path).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and current:
            out[m.group(1)] = current
    return out


def system_lib(name):
    """Whether the dynamic loader finds `name` on this system (ldconfig's cache)."""
    cache = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    return re.search(r"^\s+" + re.escape(name) + r" ", cache, re.M) is not None


def main():
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torch is not installed in this Python")
    torch_dir = spec.submodule_search_locations[0]
    lib_dir = os.path.join(torch_dir, "lib")
    libs = [os.path.join(lib_dir, f) for f in sorted(os.listdir(lib_dir)) if ".so" in f]
    libs += [os.path.join(torch_dir, f) for f in os.listdir(torch_dir) if f.startswith("_C") and f.endswith(".so")]
    present = set(os.listdir(lib_dir))
    stubs_marker = os.path.join(lib_dir, ".layerlab-cuda-stubs")
    stubbed = set(open(stubs_marker).read().split()) if os.path.exists(stubs_marker) else set()
    # The libraries torch needs that neither the wheel nor the system has (or that we made).
    missing = set()
    for lib in libs:
        if os.path.basename(lib) in stubbed:
            continue
        for n in needed(lib):
            if (n not in present or n in stubbed) and not system_lib(n):
                missing.add(n)
    missing |= stubbed
    if not missing:
        print("torch's libraries need nothing this system lacks")
        return
    # What each stub must define: versioned imports go to the file that owns the version;
    # unversioned imports that nothing in torch defines go to every missing library the
    # importing file needs (the loader takes the first definition in its search order).
    torch_defined = set()
    per_lib = {}
    for lib in libs:
        if os.path.basename(lib) in stubbed:
            continue
        d, u = symbols(lib)
        torch_defined |= d
        per_lib[lib] = u
    exports = {m: {} for m in missing}  # stub -> {symbol: version or None}
    for lib, undefined in per_lib.items():
        owners = version_files(lib)
        mine = [n for n in needed(lib) if n in missing]
        for name, version in undefined:
            if version is not None:
                owner = owners.get(version)
                if owner in missing:
                    exports[owner][name] = version
            elif name not in torch_defined:
                for owner in mine:
                    exports[owner].setdefault(name, None)
    # Unversioned names that the system's own libraries (libc, libstdc++, libm, ...) define
    # must not be shadowed: keep only names that look like CUDA's API.
    cuda_like = re.compile(r"^(_*cuda|cu[A-Z]|cublas|cudnn|cufft|cufile|curand|cusolver|cusparse|nccl|nvrtc|nvshmem|nvJitLink|cupti|Cupti|nvtx)", re.I)
    with tempfile.TemporaryDirectory() as tmp:
        for soname, syms in sorted(exports.items()):
            syms = {s: v for s, v in syms.items() if v is not None or cuda_like.match(s)}
            c = os.path.join(tmp, "stub.c")
            with open(c, "w") as f:
                f.write("/* CUDA stub for a CPU-only torch; see benches/torch_cuda_stubs.py */\n")
                f.write('static const char message[] = "CUDA stub: no GPU (benches/torch_cuda_stubs.py)";\n')
                for s in sorted(syms):
                    if re.search(r"(ErrorString|ErrorName|GetString)$", s):
                        f.write(f"const char *{s}(void) {{ return message; }}\n")
                    else:
                        f.write(f"long {s}(void) {{ return 100; }}\n")
            script = os.path.join(tmp, "versions.map")
            with open(script, "w") as f:
                nodes = sorted({v for v in syms.values() if v})
                for k, v in enumerate(nodes):
                    # Unversioned imports bind to any definition: they ride on the first node.
                    names = "".join(f"{s}; " for s, sv in syms.items() if sv == v or (k == 0 and sv is None))
                    f.write(f"{v} {{ global: {names}}};\n")
                if not nodes:
                    f.write("{ global: *; };\n")
            out = os.path.join(lib_dir, soname)
            flags = ["-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", f"-Wl,--version-script,{script}"]
            subprocess.run(["gcc", *flags, "-o", out, c], check=True)
            print(f"stub {soname}: {len(syms)} symbols")
    with open(stubs_marker, "w") as f:
        f.write("\n".join(sorted(missing)) + "\n")


if __name__ == "__main__":
    main()
