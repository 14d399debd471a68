# jemalloc for the test suite, sourced by tests/run.sh and .ci/run. XLA's compile
# is malloc-heavy: with jemalloc instead of glibc's malloc the update steps
# compile about 30% faster (BENCHMARKS.md, "Compile time of the test suite's
# update steps"). Optional: without it the tests only run slower.

JEMALLOC_USER_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/harmonax/jemalloc"

# Prints the path of an installed libjemalloc.so.2 (the system's, else the one
# install_jemalloc unpacked for this user); nothing when there is none.
find_jemalloc() {
  local lib
  for lib in /usr/lib/*/libjemalloc.so.2 "$JEMALLOC_USER_DIR"/usr/lib/*/libjemalloc.so.2; do
    if [ -e "$lib" ]; then echo "$lib"; return; fi
  done
}

# Debian/Ubuntu: installs libjemalloc2 as root, else unpacks its package for this
# user (apt-get download + dpkg-deb, no root). Never fails the caller.
install_jemalloc() {
  if [ -n "$(find_jemalloc)" ]; then return 0; fi
  if [ "$(id -u)" = 0 ]; then
    { apt-get install -y -qq libjemalloc2 \
        || { apt-get update -qq && apt-get install -y -qq libjemalloc2; }; } > /dev/null 2>&1 \
      || true
  fi
  if [ -z "$(find_jemalloc)" ]; then
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq libjemalloc2 && mkdir -p "$JEMALLOC_USER_DIR" \
       && dpkg-deb -x libjemalloc2_*.deb "$JEMALLOC_USER_DIR") > /dev/null 2>&1 || true
    rm -rf "$tmp"
  fi
  if [ -z "$(find_jemalloc)" ]; then
    echo "jemalloc not installed (no apt): the tests use glibc's malloc and compile slower"
  fi
  return 0
}
