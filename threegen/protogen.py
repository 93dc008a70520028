"""Generate the Python stubs (and .pyi typing) from protos/ into the threegen package.

The stubs are committed so that a plain `pip install` needs no protoc; `--check`
regenerates into a scratch folder and fails when the committed files are stale.

    python -m threegen.protogen          # write
    python -m threegen.protogen --check  # CI
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("threegen/*/v1/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc once over every proto; return the generated files (relative to out_dir)."""
    from grpc_tools import protoc

    wkt = Path(protoc.__file__).parent / "_proto"
    plugin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = []
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            generated.append(path.relative_to(out_dir))
    # Namespace folders need __init__.py to be regular packages inside `threegen`.
    for rel in {p.parent for p in generated}:
        for parent in [rel, *rel.parents]:
            if parent == Path(".") or parent == Path("threegen"):
                continue
            init = out_dir / parent / "__init__.py"
            if not init.exists():
                init.write_text("")
                generated.append(init.relative_to(out_dir))
    return sorted(set(generated))


def committed_files() -> set[Path]:
    found = set()
    for path in (REPO / "threegen").glob("*/v1/*"):
        if path.name.endswith(GENERATED_SUFFIXES):
            found.add(path.relative_to(REPO))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        generated = generate(tmp_path)
        stubs = {p for p in generated if p.name.endswith(GENERATED_SUFFIXES)}
        if args.check:
            stale = sorted(
                str(p)
                for p in stubs
                if not (REPO / p).exists() or not filecmp.cmp(tmp_path / p, REPO / p, shallow=False)
            )
            extra = sorted(str(p) for p in committed_files() - stubs)
            if stale or extra:
                print("generated stubs are stale; run `python -m threegen.protogen`", file=sys.stderr)
                for name in stale:
                    print(f"  differs or missing: {name}", file=sys.stderr)
                for name in extra:
                    print(f"  no longer generated: {name}", file=sys.stderr)
                return 1
            print(f"{len(stubs)} generated files are up to date")
            return 0
        for stale in committed_files() - stubs:
            (REPO / stale).unlink()
        for rel in generated:
            target = REPO / rel
            if rel.name == "__init__.py" and target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / rel, target)
        print(f"wrote {len(stubs)} files from {len(proto_files())} protos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
