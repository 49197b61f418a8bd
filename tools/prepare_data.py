"""Prepare public feature releases (oad/data/prepare.py): convert the OadTR pickles to the LSTR layout,
pool per-chunk feature maps to vectors, or build per-chunk targets from temporal annotations.

    .venv/bin/python tools/prepare_data.py oadtr_to_lstr src=/data/oadtr dst=/data/thumos_lstr
    .venv/bin/python tools/prepare_data.py pool src=/data/hdd/inceptionresnetv2 dst=/data/hdd/inceptionresnetv2_mean
    .venv/bin/python tools/prepare_data.py targets annotations=/data/th14_annotations \
        out=/data/thumos/target_perframe lengths_from=/data/thumos/rgb_kinetics_resnet50
    .venv/bin/python tools/prepare_data.py --help
Prints the summary as JSON.
"""

import json
import logging
import sys

from oad.data.prepare import USAGE, main

if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(USAGE)
        sys.exit(0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from oad.data.readers import DataError

    try:
        print(json.dumps(main(sys.argv[1:]), indent=1))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
