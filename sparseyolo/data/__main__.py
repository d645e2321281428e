"""`python -m sparseyolo.data fetch`: download the sample data used by tests and benchmarks."""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["fetch"]:
        print("usage: python -m sparseyolo.data fetch", file=sys.stderr)
        return 2
    from sparseyolo.data.lidar import lidar_files

    files = lidar_files()
    print(f"LiDAR samples: {len(files)} files in {files[0].parent}")
    try:
        from sparseyolo.data.aerial import aerial_files  # added with the YOLO integration
    except ImportError:
        return 0
    files = aerial_files()
    print(f"aerial samples: {len(files)} files in {files[0].parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
