"""`pneumo-fastai serve` under load and abuse: right answers, a live server, nothing kept.

    python bench/serve_abuse.py exports/pneumo_resnet34.json --concurrency 2 4

For each `--concurrency`, starts the server on a free loopback port (its own TMPDIR, so that
what it keeps can be counted), then `--clients` threads each send `--requests` real X-rays
through gradio_client's `predict` API, with hostile files among them: a zip bomb (1 GiB of
zeros in a ~1 MB zip), a file over `--max-file-mb`, a DICOM whose preamble is an EPS header, and
a PNG that declares 20000 x 20000 pixels. It checks every X-ray's answer against
`load_model(...).predict` of the same file (probability within 1e-5, same label), that every
hostile file got an error answer or a refusal and the server went on answering, the server's
RSS before and after (issue 30: back within 100 MB), and the files left under its TMPDIR.
Network traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from benchlib import SHARED_DATA, machine_line, rss_mb, same_answer, serve_reference, serving
from gradio_client import Client, handle_file

MAX_FILE_MB = 8.0


def hostile_files(folder: Path) -> dict[str, Path]:
    """The abuse: small files that used to cost memory, time or a crash."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    bomb = folder / "bomb.zip"
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("x.png", "w", force_zip64=True) as f,
    ):
        for _ in range(1024):
            f.write(bytes(1 << 20))
    big = folder / "big.png"
    Image.new("L", (64, 64)).save(big)
    with open(big, "ab") as f:
        f.write(os.urandom(int(MAX_FILE_MB * 1.5 * 2**20)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    preamble = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n".ljust(128, b" ")
    ds = FileDataset("eps.dcm", Dataset(), file_meta=meta, preamble=preamble)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME2"
    ds.Rows = ds.Columns = 256
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (256, 256), np.uint16).tobytes()
    ds.save_as(eps := folder / "eps.dcm", enforce_file_format=True)
    header = folder / "header.png"  # 20000 x 20000 declared, a hundred bytes
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    header.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )  # fmt: skip
    return {"zip bomb": bomb, "oversize": big, "EPS DICOM": eps, "20000 px header": header}


def run(args: argparse.Namespace, concurrency: int, xrays: list[Path], reference: dict) -> None:
    """One server at `concurrency`: the load, the abuse, and what it kept."""
    tmp = Path(tempfile.mkdtemp(prefix="serve-abuse-"))
    env = {**os.environ, "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    hostile = hostile_files(Path(tempfile.mkdtemp(prefix="hostile-")))
    options = ["--concurrency", str(concurrency), "--max-file-mb", str(MAX_FILE_MB)]
    with serving(args.model, *options, env=env) as (server, url):
        before = rss_mb(server.pid)

        def client_run(k: int) -> list[tuple[str, float, str | None]]:
            """(what was sent, seconds, what was wrong with the answer or None) per request."""
            client = Client(url, verbose=False)
            out = []
            for i in range(args.requests):
                if k < len(hostile) and i == 0:
                    name, f = list(hostile.items())[k]
                else:
                    name, f = "x-ray", xrays[(k + i) % len(xrays)]
                start = time.perf_counter()
                try:
                    answer = client.predict(handle_file(str(f)), api_name="/predict")
                except Exception as e:  # refused before the handler: over --max-file-mb
                    wrong = None if name == "oversize" else f"refused: {e}"
                    out.append((name, time.perf_counter() - start, wrong))
                    continue
                seconds, wrong = time.perf_counter() - start, None
                if name == "x-ray" and not same_answer(answer, ref := reference[str(f)]):
                    wrong = answer["error"] or f"P {answer['probability']} vs {ref.probability}"
                elif name not in ("x-ray", "EPS DICOM") and answer["error"] is None:
                    wrong = "answered"
                out.append((name, seconds, wrong))
            return out

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = [r for rs in pool.map(client_run, range(args.clients)) for r in rs]
        wall = time.perf_counter() - start
        still = Client(url, verbose=False).predict(handle_file(str(xrays[0])), api_name="/predict")
        time.sleep(2)
        after = rss_mb(server.pid)
    kept = [p for p in tmp.rglob("*") if p.is_file()]
    uploads = [p for p in kept if p.suffix.lower() in (".png", ".jpeg", ".jpg", ".dcm", ".zip")]
    latencies = sorted(t for name, t, _ in results if name == "x-ray")
    wrong = Counter(f"{name}: {why}" for name, _, why in results if why is not None)
    print(
        f"concurrency {concurrency}: {args.clients} clients x {args.requests} requests = "
        f"{len(results)}: {len(results) - wrong.total()} right, wrong: {dict(wrong) or 'none'}; "
        f"X-ray p50 {latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.2f} s, "
        f"{len(results) / wall:.1f} requests/s"
    )
    hostile_times = {n: round(t, 2) for n, t, _ in results if n != "x-ray"}
    print(f"  hostile files (s): {hostile_times}; answers afterwards: {still['error'] is None}")
    print(
        f"  server RSS {before:.0f} MiB before, {after:.0f} MiB after "
        f"({after - before:+.0f}); files left in its TMPDIR: {len(kept)}, uploads {len(uploads)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--clients", type=int, default=12)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--concurrency", type=int, nargs="+", default=[2, 4])
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    args = p.parse_args()
    print(machine_line())
    xrays, reference = serve_reference(args.model, args.data)
    for concurrency in args.concurrency:
        run(args, concurrency, xrays, reference)


if __name__ == "__main__":
    main()
