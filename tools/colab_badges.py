"""Writes each notebook's "Open in Colab" badge from the repository URL the README gives once.

The README names the repository in one link, `[repository](https://github.com/OWNER/REPO)`.
Each notebooks/NAME.ipynb carries, under its title, a badge that opens it from there:
https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/NAME.ipynb.
tests/test_notebooks.py fails when a badge and the README disagree (a moved repository, a
renamed notebook); rerun this to rewrite them.

  python tools/colab_badges.py
"""

import glob
import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB = "https://colab.research.google.com/github/"


def repository_url() -> str:
  """The one `[repository](https://github.com/OWNER/REPO)` link of README.md."""
  with open(os.path.join(REPO, "README.md")) as f:
    urls = re.findall(r"\[repository\]\((https://github\.com/[^)\s]+)\)", f.read())
  if len(urls) != 1:
    raise ValueError(f"README.md has {len(urls)} [repository](https://github.com/...) links, not 1")
  return urls[0]


def badge(name: str, url: str) -> str:
  """The markdown badge that opens notebooks/`name` of the GitHub repository at `url` in Colab."""
  owner_repo = url.removeprefix("https://github.com/").removesuffix(".git").strip("/")
  return f"[![Open In Colab]({BADGE_IMAGE})]({COLAB}{owner_repo}/blob/{BRANCH}/notebooks/{name})"


def write(path: str, url: str) -> bool:
  """Puts the badge under the title of the notebook's first (markdown) cell; True if it changed."""
  with open(path) as f:
    text = f.read()
  notebook = json.loads(text)
  cell = notebook["cells"][0]
  assert cell["cell_type"] == "markdown", f"{path}: the first cell is not markdown"
  lines = "".join(cell["source"]).splitlines(keepends=True)
  kept = [line for line in lines if COLAB not in line]  # Without an earlier badge,
  if len(kept) < len(lines) and len(kept) > 2 and not kept[1].strip() and not kept[2].strip():
    del kept[1]  # and the blank line it leaves.
  lines = kept
  lines[1:1] = ["\n", badge(os.path.basename(path), url) + "\n"]
  cell["source"] = lines
  # nbformat's own layout, so a notebook saved by Jupyter afterwards shows no diff.
  new = json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
  if new != text:
    with open(path, "w") as f:
      f.write(new)
  return new != text


def main() -> None:
  url = repository_url()
  for path in sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb"))):
    print(f"{os.path.relpath(path, REPO)}: {'written' if write(path, url) else 'up to date'}")


if __name__ == "__main__":
  main()
