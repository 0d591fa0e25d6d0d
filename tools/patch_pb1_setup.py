"""Patch pb1-detectron2 0.6's setup.py for an install without compiled ops.

- ``ext_modules``: none (the sdist has no ``detectron2/layers/csrc``);
- ``package_data``: ship ``detectron2/model_zoo/configs`` (the sdist's setup.py globs a top-level
  ``configs/`` that the sdist does not have, so the model-zoo configs would be left out).

Usage: python tools/patch_pb1_setup.py path/to/setup.py
"""
import sys

OLD_EXT = "ext_modules=get_extensions(),"
OLD_DATA = 'package_data={"detectron2.model_zoo": get_model_zoo_configs()},'
NEW_DATA = 'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},'


def main(path: str) -> None:
    text = open(path).read()
    for old in (OLD_EXT, OLD_DATA):
        if old not in text:
            sys.exit(f"{path}: expected line not found, cannot patch: {old}")
    text = text.replace(OLD_EXT, "ext_modules=[],").replace(OLD_DATA, NEW_DATA)
    open(path, "w").write(text)


if __name__ == "__main__":
    main(sys.argv[1])
