# Sourced by scripts/setup.sh and scripts/setup-peers.sh: install the Debian packages named in
# the PACKAGES array that are missing (as root, else with sudo). $1 prefixes the messages.
# Returns non-zero if apt-get fails.
apt_install_missing() {
  local who="$1" sudo="" p
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "$who: system packages present"
    return 0
  fi
  echo "$who: installing ${missing[*]}"
  $sudo apt-get update -qq || return 1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
