"""Send an image to a running `bodyrt serve` and print what comes back (needs `requests`).

    bodyrt serve --bundle BUNDLE &            # http://127.0.0.1:8000 by default
    python examples/python/serve_client.py photo.jpg --box 120 40 520 700 --box 600 60 900 710
    python examples/python/serve_client.py photo.jpg --npz people.npz   # every result as arrays
"""

import argparse
import json
import sys

import requests


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="POST an image to bodyrt serve's /v1/infer")
    parser.add_argument("image", help="JPEG or PNG file")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service address (default: %(default)s)")
    parser.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                        help="person box in pixels; repeat for several (default: the whole image)")
    parser.add_argument("--npz", help="ask for .npz (with vertices) and write it here")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default: %(default)s)")
    args = parser.parse_args(argv)

    with open(args.image, "rb") as stream:
        files = {"image": (args.image, stream.read())}
    form = {"boxes": json.dumps(args.box)} if args.box else {}
    params = {"format": "npz", "vertices": "true"} if args.npz else {}
    answer = requests.post(f"{args.url}/v1/infer", files=files, data=form, params=params, timeout=args.timeout)
    if answer.status_code != 200:
        try:
            reason = answer.json()["error"]
        except ValueError:
            reason = answer.text.strip()
        print(f"serve_client: {answer.status_code}: {reason}", file=sys.stderr)
        return 1
    if args.npz:
        with open(args.npz, "wb") as stream:
            stream.write(answer.content)
        print(f"serve_client: wrote {args.npz}")
        return 0
    result = answer.json()
    for person in result["people"]:
        print(f"person in box {person['box']}: camera scale {person['camera_scale']:.3f}, "
              f"translation {person['pinhole_translation']}, betas[:3] {person['betas'][:3]}")
    print(f"({len(result['people'])} person(s), {result['replica_ms']:.0f} ms on the replica; "
          f"untrained weights: {result['untrained']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
