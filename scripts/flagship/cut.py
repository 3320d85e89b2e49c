"""One call's subset of a flagship spec: cut.py SPEC OUT key=yaml-value ... ('key=null' drops the key). The claims
path is relative to params/ and only the report reads it, so it is dropped."""
import sys

import yaml

spec = yaml.safe_load(open(sys.argv[1]))
spec.pop("claims", None)
spec.pop("quality_evidence", None)
for arg in sys.argv[3:]:
    key, value = arg.split("=", 1)
    if (parsed := yaml.safe_load(value)) is None:
        spec.pop(key, None)
    else:
        spec[key] = parsed
yaml.safe_dump(spec, open(sys.argv[2], "w"), sort_keys=False)
