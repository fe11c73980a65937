#!/usr/bin/env bash
# Makes sure the headless browser that the web UI's test drives (tests/ui_browser.rs) is
# installed: Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver),
# with a font for its screenshots. Installs them from Debian's packages when missing (needs
# root, like scripts/services.sh), otherwise says what to install.
set -euo pipefail

say() { echo "browser: $*" >&2; }

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -eq 0 ]; then
  say "$(/usr/bin/chromium --version 2>/dev/null || echo chromium) and chromedriver are installed"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  say "${missing[*]} not installed: install them (as root: apt-get install chromium chromium-driver fonts-dejavu-core), then run this again"
  exit 1
fi
say "installing ${missing[*]}"
# The driver must match the browser's version: both come from the same apt-get run.
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  chromium chromium-driver fonts-dejavu-core >&2
say "$(/usr/bin/chromium --version 2>/dev/null || echo chromium) and chromedriver are installed"
