"""Write the measured tables of the organism's model card from a card JSON, so no number in the
card is typed by hand.

    python scripts/evaluate.py --card --out runs/card                  # measure (results.json)
    python scripts/model_card.py --card runs/card/results.json         # fill organism/checkpoints/README.md
    python scripts/model_card.py --card runs/card/results.json --check # exit 1 if the README is stale

Replaces the block between the README's ``<!-- card:begin ... -->`` and ``<!-- card:end -->`` lines
with ``analyses.organism_card.card_markdown`` of the JSON; everything else in the README is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.organism_card import card_claims, fill_model_card  # noqa: E402
from analyses.reporting import write_text_atomic  # noqa: E402
from hooks import TwinlensError  # noqa: E402

README = Path(__file__).resolve().parents[1] / "organism" / "checkpoints" / "README.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--card", type=Path, required=True, help="results.json of `scripts/evaluate.py --card`")
    ap.add_argument("--readme", type=Path, default=README, help="the model card to fill (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README differs")
    args = ap.parse_args(argv)
    try:
        try:
            card = json.loads(args.card.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TwinlensError(f"cannot read the card JSON {args.card}: {exc}; make it with "
                                "`python scripts/evaluate.py --card --out DIR` (DIR/results.json)") from None
        if not isinstance(card, dict) or "card_version" not in card:
            raise TwinlensError(f"{args.card} is not a card JSON (no 'card_version'); make one with "
                                "`python scripts/evaluate.py --card --out DIR`")
        try:
            old = args.readme.read_text()
        except OSError as exc:
            raise TwinlensError(f"cannot read the model card {args.readme}: {exc}") from None
        new = fill_model_card(old, card)
    except TwinlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != old:
            print(f"{args.readme} is not what {args.card} gives; run without --check to update it", file=sys.stderr)
            return 1
        return 0
    write_text_atomic(args.readme, new)
    # The claim rows, machine-readable, beside the README: analyses.controls reads them so that a
    # control run on a twin that did not come out as planted reads "untested", not FAILED.
    # recomputed by the current rules, as the README's claims table is (a stored list can be older)
    write_text_atomic(args.readme.parent / "claims.json", json.dumps(card_claims(card), indent=1) + "\n")
    print(f"wrote the measured tables of {args.card} into {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
