"""Convert a reference OadTR, TRN, MiniROAD, LSTR or TeSTra checkpoint into one this project's tools load.

    .venv/bin/python tools/convert_reference_checkpoint.py SRC DST [dataset=thumos14] [num_heads=8] ...

SRC: a checkpoint of github.com/wangxiang1230/OadTR (``torch.save({'model': state_dict, ...})``),
xumingze0308/TRN.pytorch, jbistanbul/MiniROAD, amazon-science/long-short-term-transformer or
zhaoyue-zephyrus/TeSTra (``arch=lstr|testra``: their parameter names are the same). DST: the converted file, for ``tools/eval.py ckpt_path=DST`` and the
streaming runner. Extra ``key=value`` arguments are constructor overrides (head counts, and window /
num_queries for TRN, which the tensors do not tell) or ``dataset=<thumos14|tvseries|hdd>``.
"""

import json
import sys


def main(argv: list[str]) -> int:
    args = [a for a in argv if "=" not in a]
    if len(args) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    kw = {}
    for a in argv:
        if "=" in a:
            key, value = a.split("=", 1)
            kw[key] = int(value) if value.lstrip("-").isdigit() else (float(value) if value.replace(".", "", 1).isdigit() else value)
    from oad.checkpoint import convert_reference_checkpoint

    dataset = kw.pop("dataset", None)
    arch = kw.pop("arch", None)
    result = convert_reference_checkpoint(args[0], args[1], dataset=dataset, arch=arch, **kw)
    print(json.dumps({k: v for k, v in result.items() if k != "data_info"}, indent=2))
    print(f"wrote {args[1]} ({result['model']}, {result['num_parameters']:,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
