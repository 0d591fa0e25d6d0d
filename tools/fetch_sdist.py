"""Download one source distribution from the package index pip uses, checking its sha256.

``pip download`` cannot fetch pb1-detectron2 alone: it builds metadata, which runs the sdist's
setup.py. This script reads the PEP 503 simple index instead.

Usage: python tools/fetch_sdist.py NAME VERSION SHA256 DEST
"""
import hashlib
import os
import re
import sys
import urllib.parse
import urllib.request


def main(name: str, version: str, sha256: str, dest: str) -> None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page_url = f"{index}/{name}/"
    page = urllib.request.urlopen(page_url, timeout=60).read().decode()
    wanted = f"{name}-{version}.tar.gz"
    for href in re.findall(r'href="([^"]+)"', page):
        url = urllib.parse.urljoin(page_url, href)
        if urllib.parse.urlparse(url).path.endswith("/" + wanted):
            data = urllib.request.urlopen(url.split("#")[0], timeout=300).read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha256:
                sys.exit(f"{wanted}: sha256 {digest} does not match the expected {sha256}")
            with open(dest, "wb") as f:
                f.write(data)
            return
    sys.exit(f"{wanted} not found on {page_url}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
