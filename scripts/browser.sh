#!/usr/bin/env bash
# Makes sure headless Chromium is installed for the web dashboard's browser tests (tests/ui/test_browser.py):
# Debian's `chromium` package, driven by Playwright through its executable (no browser download, tlq's tests
# run offline). Installs it with apt-get when missing (refreshing the package lists if the first try fails);
# exits non-zero, saying so, when it cannot: the browser tests fail without it, never skip.
set -u

if ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null; then
    echo "installing chromium (apt-get)"
    apt-get install -y -q chromium chromium-driver >/dev/null ||
      { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
  fi
fi

if ! command -v chromium >/dev/null; then
  echo "chromium is not installed and could not be (apt-get install -y chromium chromium-driver, as root)" >&2
  exit 1
fi
echo "browser: $(chromium --version 2>/dev/null || echo chromium)"
