"""The container images (a step of `./sb test`; alone: `./sb images`). No container registry and no
daemon: Debian's buildah, `--isolation chroot`, the `vfs` storage driver, storage under
.sb-tools/images/ (removed afterwards unless --keep).

1. the release binaries (`cargo build --release`, or --bin-dir) and the web client (web/dist);
2. the build context of tools/images/Containerfile: a `runtime/` tree with the libraries `ldd`
   lists for every image (copied from this machine, i.e. from Debian's packages), the user 65532
   and the mount points; a tree per image with its binary (debug info stripped) and the libraries
   only it needs; `web/` with Debian's nginx and web/dist at the chart's `front.webRoot`;
3. `buildah build --target <image>` for every stage, tagged `<image.repository>/<name>:<appVersion>`
   as the chart's defaults name them; the image sizes;
4. checks, each failing the step: the stages are exactly the images the chart names; every image's
   user is numeric, not root, and the chart's runAsUser; no file of an image is writable by that
   user (or set-id); `buildah run <image> -- <binary> --version` prints the chart's appVersion (a
   missing library fails here); every app container of the rendered chart starts from its image on
   a read-only root (its rendered settings mounted at /etc/switchboard, an empty /tmp, as user
   65532 without capabilities) and takes its settings; the web image's nginx runs the chart's own
   front configuration on a read-only root and serves the web client and its `/healthz`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request

import chartcheck
import web
from state import REPO
from util import SbError, ensure_packages, info, which

CONTAINERFILE = os.path.join(REPO, "tools", "images", "Containerfile")
WORK = os.path.join(chartcheck.CACHE, "images")
NGINX = "/usr/sbin/nginx"
RUNTIME_STAGE = "runtime"
WEB_IMAGE = "web"
# directories of every image: mount points of the chart (/tmp, /etc/switchboard) and of a runtime
DIRS = ["tmp", "proc", "dev", "etc/switchboard"]
# the only path of an image its user may write: the chart mounts an emptyDir there
WRITABLE = {"/tmp"}
# what the step runs, and the Debian package that has it (apt-installed when missing, as root)
COMMANDS = {"buildah": "buildah", "unshare": "util-linux", "setpriv": "util-linux", "chroot": "coreutils",
            "strip": "binutils", "ldd": "libc-bin", "nginx": "nginx"}

# A container as the kubelet would run it with the chart's securityContext, without a container
# runtime: a private mount namespace, the image's root bind-mounted read-only
# (readOnlyRootFilesystem), a tmpfs at /tmp (the chart's emptyDir), proc, a small /dev, the given
# directories bind-mounted read-only (the ConfigMaps), then the command as the image's user
# (runAsUser/runAsGroup; leaving root clears every capability: drop ALL) with no_new_privs
# (allowPrivilegeEscalation: false). No network namespace: listeners are on loopback.
SANDBOX_SH = r"""
set -eu
root=$1; user=$2; shift 2
container_path=${PATH:-}
PATH=/usr/sbin:/usr/bin:/sbin:/bin
setpriv=$(command -v setpriv); chroot=$(command -v chroot)
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev tmpfs "$root/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o mode=755,size=64k,nosuid tmpfs "$root/dev"
for d in null zero random urandom; do : > "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
while [ "$1" != "--" ]; do mount --bind -o ro "$1" "$root$2"; shift 2; done
shift
PATH=$container_path
exec "$setpriv" --no-new-privs "$chroot" --userspec="$user" --groups="${user#*:}" "$root" "$@"
"""


# ---------------------------------------------------------------- pure logic (unit-tested)


def parse_ldd(binary: str, text: str) -> list[str]:
    """The files the dynamic loader maps for `binary`, from `ldd` output; a missing one is an error."""
    libs = []
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("linux-vdso.so") or ln in ("statically linked", "not a dynamic executable"):
            continue
        if "not found" in ln:
            raise SbError(f"{binary}: a library is missing on this machine: {ln}")
        path = (ln.split("=>", 1)[1] if "=>" in ln else ln).strip().split(" (", 1)[0].strip()
        if not path.startswith("/"):
            raise SbError(f"{binary}: cannot read the ldd line {ln!r}")
        libs.append(path)
    return libs


def stages(containerfile_text: str) -> dict[str, str]:
    """`FROM <base> AS <name>` stages of a Containerfile: name -> base, in order."""
    out = {}
    for ln in containerfile_text.splitlines():
        m = re.match(r"\s*FROM\s+(\S+)\s+AS\s+(\S+)\s*$", ln, re.I)
        if m:
            out[m.group(2)] = m.group(1)
    return out


def image_stages(containerfile_text: str) -> list[str]:
    """The stages that are images (every stage but the shared runtime)."""
    return [s for s in stages(containerfile_text) if s != RUNTIME_STAGE]


def pod_specs(objs: list[dict]) -> list[dict]:
    return [o["spec"]["template"]["spec"] for o in objs if o.get("kind") in ("Deployment", "StatefulSet", "Job")]


def chart_images(objs: list[dict]) -> dict[str, str]:
    """Image name (last path part, no tag) -> full reference, of every container the chart renders."""
    out = {}
    for spec in pod_specs(objs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            ref = c["image"]
            out[ref.rsplit("/", 1)[-1].split(":", 1)[0]] = ref
    return out


def chart_user(objs: list[dict]) -> int:
    """The runAsUser every pod of the chart has (one value, or an error)."""
    users = {spec.get("securityContext", {}).get("runAsUser") for spec in pod_specs(objs)}
    if len(users) != 1 or not isinstance(next(iter(users)), int):
        raise SbError(f"expected one numeric runAsUser in every pod of the chart, found {sorted(map(str, users))}")
    return users.pop()


def front(objs: list[dict]) -> tuple[str, list[str], str]:
    """The front's nginx.conf text, its container command and the web root that conf serves."""
    conf = next(o for o in objs if o.get("kind") == "ConfigMap" and o["metadata"]["name"].endswith("-front"))
    text = conf["data"]["nginx.conf"]
    command = next(c["command"] for spec in pod_specs(objs) for c in spec["containers"] if c["name"] == "nginx")
    m = re.search(r"^\s*root\s+(\S+);", text, re.M)
    if not m:
        raise SbError("the front's nginx.conf has no `root`")
    return text, command, m.group(1)


def image_user(config_user: str) -> tuple[int, int]:
    """uid and gid of an image's `User`: numeric and not root, else an error (Kubernetes refuses a
    non-numeric user under runAsNonRoot, and root is what the images must not be)."""
    m = re.fullmatch(r"(\d+)(?::(\d+))?", config_user or "")
    if not m:
        raise SbError(f"image user {config_user!r} is not numeric uid[:gid] (empty means root)")
    uid, gid = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
    if uid == 0 or gid == 0:
        raise SbError(f"image user {config_user!r} is root")
    return uid, gid


def writable_paths(root: str, uid: int, gid: int, allowed: set[str] = WRITABLE) -> list[str]:
    """Paths of a root tree (shown from /) that the user could write or that are set-id; `allowed`
    ones (mount points the chart covers) are skipped."""
    bad = []
    for dirpath, dirs, files in os.walk(root):
        for name in [""] + dirs + files:
            p = os.path.join(dirpath, name) if name else dirpath
            if not name and dirpath != root:
                continue  # every directory is seen once, from its parent
            st = os.lstat(p)
            rel = "/" + os.path.relpath(p, root) if p != root else "/"
            if stat.S_ISLNK(st.st_mode) or rel in allowed:
                continue
            mode = st.st_mode
            if st.st_uid == uid or (st.st_gid == gid and mode & 0o020) or mode & 0o002:
                bad.append(f"{rel} (writable by {uid}:{gid})")
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                bad.append(f"{rel} (set-id)")
    return sorted(bad)


def split_libs(needs: dict[str, list[str]]) -> tuple[list[str], dict[str, list[str]]]:
    """Libraries every image needs (the runtime stage) and, per image, the ones only it needs."""
    sets = [set(v) for v in needs.values()]
    common = sorted(set.intersection(*sets)) if sets else []
    return common, {k: sorted(set(v) - set(common)) for k, v in needs.items()}


def passwd(uid: int, gid: int) -> tuple[str, str]:
    return (f"root:x:0:0:root:/root:/sbin/nologin\nswitchboard:x:{uid}:{gid}:switchboard:/nonexistent:/sbin/nologin\n",
            f"root:x:0:\nswitchboard:x:{gid}:\n")


def front_conf_for_test(conf: str, port: int, status_port: int, public: int, status: int) -> str:
    """The chart's front configuration with its two listeners on loopback ports and the resolver an
    address (nginx resolves a resolver name once at start; no request here goes to the edges)."""
    out, n = re.subn(rf"(?m)^(\s*)listen {port}\b", rf"\g<1>listen 127.0.0.1:{public}", conf)
    out, m = re.subn(rf"(?m)^(\s*)listen {status_port}\b", rf"\g<1>listen 127.0.0.1:{status}", out)
    out, r = re.subn(r"(?m)^(\s*)resolver \S+", r"\g<1>resolver 127.0.0.1", out)
    if (n, m, r) != (1, 1, 1):
        raise SbError(f"the front's nginx.conf changed shape (listen {port}: {n}, listen {status_port}: {m}, "
                      f"resolver: {r}); update images.front_conf_for_test")
    return out


# ---------------------------------------------------------------- building


def _buildah() -> list[str]:
    return [which("buildah") or "buildah", "--root", os.path.join(WORK, "storage"), "--runroot",
            os.path.join(WORK, "run"), "--storage-driver", "vfs"]


def _run(cmd: list[str], quiet: bool = False, **kw) -> str:
    if not quiet:
        info("$ " + " ".join(cmd))
    r = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if r.returncode != 0:
        raise SbError(f"`{' '.join(cmd)}` exited with {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r.stdout


def release_binaries() -> str:
    """`cargo build --release` of the packages with the image binaries; their directory."""
    cmd = ["cargo", "build", "--release", "--locked", "-p", "edge-ws", "-p", "workers", "-p", "router", "--bins"]
    info("$ " + " ".join(cmd))
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise SbError("`" + " ".join(cmd) + "` failed")
    meta = json.loads(_run(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=REPO, quiet=True))
    return os.path.join(meta["target_directory"], "release")


def _copy(src: str, root: str, dest: str, mode: int) -> None:
    full = os.path.join(root, dest.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    shutil.copyfile(src, full)  # the file's content, also when `src` is a symlink
    os.chmod(full, mode)


def _write(root: str, dest: str, text: str) -> None:
    full = os.path.join(root, dest.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    os.chmod(full, 0o644)


def _libs(path: str) -> list[str]:
    r = subprocess.run(["ldd", path], capture_output=True, text=True)
    if r.returncode != 0 and "not a dynamic executable" not in (r.stdout + r.stderr):
        raise SbError(f"ldd {path}: {r.stderr.strip()}")
    return parse_ldd(path, r.stdout)


def prepare_context(ctx: str, bin_dir: str, binaries: list[str], dist: str, web_root: str, uid: int, gid: int) -> dict:
    """The build context of tools/images/Containerfile (see there); what went where."""
    shutil.rmtree(ctx, ignore_errors=True)
    os.makedirs(ctx)
    for b in binaries:
        if not os.access(os.path.join(bin_dir, b), os.X_OK):
            raise SbError(f"no {b} binary in {bin_dir}")
    needs = {b: _libs(os.path.join(bin_dir, b)) for b in binaries}
    needs[WEB_IMAGE] = _libs(NGINX)
    common, extra = split_libs(needs)
    rt = os.path.join(ctx, RUNTIME_STAGE)
    for lib in common:
        _copy(lib, rt, lib, 0o755)
    pw, grp = passwd(uid, gid)
    _write(rt, "/etc/passwd", pw)
    _write(rt, "/etc/group", grp)
    # files first for host names (Kubernetes writes the pod's /etc/hosts), then DNS
    _write(rt, "/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    for d in DIRS:
        os.makedirs(os.path.join(rt, d), exist_ok=True)
    os.chmod(os.path.join(rt, "tmp"), 0o1777)
    for b in binaries:
        root = os.path.join(ctx, b)
        dest = os.path.join(root, "usr", "local", "bin", b)
        os.makedirs(os.path.dirname(dest))
        # symbols stay (panic backtraces name functions), line tables go (profile.release debug = 1)
        _run(["strip", "--strip-debug", "-o", dest, os.path.join(bin_dir, b)], quiet=True)
        os.chmod(dest, 0o755)
        for lib in extra[b]:
            _copy(lib, root, lib, 0o755)
    root = os.path.join(ctx, WEB_IMAGE)
    _copy(NGINX, root, NGINX, 0o755)
    for lib in extra[WEB_IMAGE]:
        _copy(lib, root, lib, 0o755)
    os.makedirs(os.path.join(root, "etc", "switchboard-front"))
    shutil.copytree(dist, os.path.join(root, web_root.lstrip("/")))
    for dirpath, dirs, files in os.walk(ctx):
        for d in dirs:
            if os.path.join(dirpath, d) != os.path.join(rt, "tmp"):
                os.chmod(os.path.join(dirpath, d), 0o755)
        for f in files:
            p = os.path.join(dirpath, f)
            os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & 0o755)
    return {"runtime": common, **extra}


def build_image(name: str, ref: str, ctx: str, version: str) -> None:
    _run(_buildah() + ["build", "--isolation", "chroot", "--pull=never", "--layers",
                       "-f", CONTAINERFILE, "--target", name, "-t", ref,
                       "--label", f"org.opencontainers.image.version={version}",
                       "--label", "org.opencontainers.image.title=switchboard " + name, ctx])


def layers(manifest: dict) -> list[tuple[str, int]]:
    """(digest, size) of an image's layers from its manifest (uncompressed in local storage)."""
    return [(layer["digest"], int(layer["size"])) for layer in manifest.get("layers", [])]


def unique_size(images_layers: list[list[tuple[str, int]]]) -> int:
    """What a set of images takes in a registry or a node's cache: each distinct layer once."""
    return sum(dict(x for layers_ in images_layers for x in layers_).values())


def inspect(ref: str) -> tuple[dict, list[tuple[str, int]]]:
    """An image's config and its layers."""
    d = json.loads(_run(_buildah() + ["inspect", "--type", "image", ref], quiet=True))
    return d["OCIv1"]["config"], layers(json.loads(d["Manifest"]))


def _du(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


# ---------------------------------------------------------------- running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sandbox(root: str, uid: int, gid: int, binds: list[tuple[str, str]], argv: list[str], env: dict,
            log) -> subprocess.Popen:
    """`argv` in the image whose root tree is `root`, as a kubelet would start it with the chart's
    securityContext (SANDBOX_SH). The log file becomes the user's, as runc hands the container's
    stdio to its user (nginx reopens /dev/stderr)."""
    os.chown(log.name, uid, gid)
    cmd = [which("unshare") or "unshare", "--mount", "--propagation", "private", which("sh") or "/bin/sh", "-c", SANDBOX_SH, "sandbox",
           root, f"{uid}:{gid}"]
    for src, dest in binds:
        cmd += [src, dest]
    return subprocess.Popen(cmd + ["--", *argv], env=env, stdout=log, stderr=log, cwd="/")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return 0, b""


def web_serves(root: str, uid: int, gid: int, env: dict, objs: list[dict], port: int, status_port: int,
               dist: str) -> str:
    """nginx of the web image with the chart's own front configuration on a read-only root: its
    /healthz answers, `/` and an unknown path give the web client's index.html, an asset is served."""
    conf, command, _ = front(objs)
    public, status = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as d:
        confdir = os.path.join(d, "front")
        os.makedirs(confdir)
        os.chmod(d, 0o755)
        os.chmod(confdir, 0o755)
        with open(os.path.join(confdir, "nginx.conf"), "w") as f:
            f.write(front_conf_for_test(conf, port, status_port, public, status))
        os.chmod(os.path.join(confdir, "nginx.conf"), 0o644)
        with open(os.path.join(d, "nginx.log"), "w+") as log:
            p = sandbox(root, uid, gid, [(confdir, "/etc/switchboard-front")], command, env, log)
            try:
                deadline = time.monotonic() + 15
                while _get(f"http://127.0.0.1:{status}/healthz") != (200, b"ok"):
                    if p.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise SbError(f"the web image's nginx did not answer /healthz (exit {p.poll()}):\n"
                                      f"{log.read()[-3000:]}")
                    time.sleep(0.1)
                with open(os.path.join(dist, "index.html"), "rb") as f:
                    index = f.read()
                assets = sorted(os.listdir(os.path.join(dist, "assets"))) if os.path.isdir(
                    os.path.join(dist, "assets")) else []
                checks = {"/": (200, index), "/some/client/route": (200, index)}
                if assets:
                    with open(os.path.join(dist, "assets", assets[0]), "rb") as f:
                        checks["/assets/" + assets[0]] = (200, f.read())
                for path, want in checks.items():
                    got = _get(f"http://127.0.0.1:{public}{path}")
                    if got != want:
                        raise SbError(f"the web image's nginx answered {path} with {got[0]} "
                                      f"({len(got[1])} bytes), not the web client's file")
            finally:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log.seek(0)
            text = log.read()
        bad = [ln for ln in text.splitlines() if re.search(r"\[(emerg|alert|crit)\]|Read-only|Permission denied", ln)]
        if bad:
            raise SbError("the web image's nginx logged:\n" + "\n".join(bad[:20]))
    return f"web: nginx served / ({len(index)} bytes), a client route, {'an asset, ' if assets else ''}/healthz"


# ---------------------------------------------------------------- the step


def _render(out_dir: str) -> list[dict]:
    """Every value set rendered for the first pinned Kubernetes version (what binaries_accept
    reads); the objects of the minimal one (the chart's default images and settings)."""
    tools = chartcheck.build_tools()[0]
    minimal = []
    for vs in chartcheck.value_sets():
        name = os.path.basename(vs)[:-len(".yaml")]
        text = _run([tools["helm"], "template", "sb", chartcheck.CHART, "-f", vs, "--kube-version",
                     chartcheck.KUBE_VERSIONS[0], "--namespace", "chat"], quiet=True)
        with open(os.path.join(out_dir, f"{name}-{chartcheck.KUBE_VERSIONS[0]}.yaml"), "w") as f:
            f.write(text)
        if name == "minimal":
            minimal = json.loads(subprocess.run([tools["yaml2json"]], input=text.encode(), capture_output=True,
                                                check=True).stdout)
    if not minimal:
        raise SbError("no helm/switchboard/ci/minimal.yaml")
    return minimal


def _human(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def build_and_check(bin_dir: str | None = None, keep: bool = False) -> str:
    """The step: build every image, check it, print the sizes; remove the images unless `keep`."""
    if os.geteuid() != 0:
        raise SbError("./sb images runs buildah and mount namespaces as root (no daemon, no rootless setup)")
    t0 = time.monotonic()
    ensure_packages(COMMANDS)
    os.makedirs(WORK, exist_ok=True)
    lock = open(os.path.join(WORK, "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SbError(f"another ./sb images is using {WORK}") from None
    with open(CONTAINERFILE) as f:
        names = image_stages(f.read())
    binaries = [n for n in names if n != WEB_IMAGE]
    rendered = tempfile.mkdtemp(prefix="sb-images-")
    try:
        objs = _render(rendered)
        wanted = chart_images(objs)
        if sorted(wanted) != sorted(names):
            raise SbError(f"the Containerfile's images {sorted(names)} are not the ones the chart names {sorted(wanted)}")
        uid = chart_user(objs)
        _, _, web_root = front(objs)
        if bin_dir is None:
            t = time.monotonic()
            bin_dir = release_binaries()
            info(f"  release binaries: {time.monotonic() - t:.0f}s")
        web.build(required=True)
        dist = os.path.join(web.WEB, "dist")
        version = wanted[names[0]].rsplit(":", 1)[1]
        ctx = os.path.join(WORK, "context")
        t = time.monotonic()
        placed = prepare_context(ctx, bin_dir, binaries, dist, web_root, uid, uid)
        info(f"  context in {time.monotonic() - t:.1f}s: {len(placed['runtime'])} libraries for every image "
             f"({', '.join(os.path.basename(p) for p in placed['runtime'])}); the binaries add "
             f"{', '.join(sorted({os.path.basename(p) for b in binaries for p in placed[b]})) or 'none'}; "
             f"nginx adds {', '.join(os.path.basename(p) for p in placed[WEB_IMAGE]) or 'none'}")
        _cleanup()
        t = time.monotonic()
        for n in names:
            build_image(n, wanted[n], ctx, version)
        built = time.monotonic() - t
        storage = _du(os.path.join(WORK, "storage"))
        report = []
        sizes = {}
        containers = {}
        try:
            for n in names:
                ref = wanted[n]
                conf, lays = inspect(ref)
                sizes[n] = lays
                iuid, igid = image_user(conf.get("User", ""))
                if iuid != uid:
                    raise SbError(f"{ref} runs as {iuid}, the chart as {uid}")
                ctr = _run(_buildah() + ["from", "--pull=never", "--name", f"sb-check-{n}", ref], quiet=True).strip()
                containers[n] = {"ctr": ctr}
                root = _run(_buildah() + ["mount", ctr], quiet=True).strip()
                bad = writable_paths(root, iuid, igid)
                if bad:
                    raise SbError(f"{ref}: its user may write or gain privileges through:\n  " + "\n  ".join(bad[:20]))
                entry = conf.get("Entrypoint") or []
                if n == WEB_IMAGE:
                    argv, want = [entry[0], "-v"], "nginx version: nginx/"
                else:
                    argv, want = entry + ["--version"], f"{n} {version}"
                r = subprocess.run(_buildah() + ["run", "--isolation", "chroot", ctr, "--", *argv],
                                   capture_output=True, text=True)
                said = (r.stdout + r.stderr).strip()
                if r.returncode != 0 or want not in said:
                    raise SbError(f"`buildah run {ref} -- {' '.join(argv)}` exited {r.returncode}, said:\n{said[-2000:]}")
                containers[n].update(root=root, uid=iuid, gid=igid, entrypoint=entry,
                                     env=dict(e.split("=", 1) for e in conf.get("Env") or []))
                report.append(f"  {ref:<34} {_human(sum(x for _, x in lays)):>9} ({len(lays)} layers: "
                              f"{' + '.join(_human(x) for _, x in lays)})  user {iuid}:{igid}  {said.splitlines()[0]}")
            info("\n".join(report))
            # every app container of every rendered value set, from its image on a read-only root
            # (the container's command, else the image's entrypoint, then its args, as Kubernetes does)
            def launch(c, args, env, conf_dir, log):
                i = containers[c["name"]]
                argv = (c.get("command") or i["entrypoint"]) + args
                return sandbox(i["root"], i["uid"], i["gid"], [(conf_dir, "/etc/switchboard")], argv,
                               dict(i["env"], **env), log)
            accepted = chartcheck.binaries_accept("", base_env={"PATH": "/usr/local/bin:/usr/bin"}, rendered=rendered,
                                                  launch=launch)
            info(f"  app images on a read-only root: {accepted}")
            nginx = next(c for spec in pod_specs(objs) for c in spec["containers"] if c["name"] == "nginx")
            ports = {p["name"]: p["containerPort"] for p in nginx["ports"]}
            i = containers[WEB_IMAGE]
            info("  " + web_serves(i["root"], i["uid"], i["gid"], i["env"], objs, ports["http"], ports["status"], dist))
        finally:
            for i in containers.values():
                subprocess.run(_buildah() + ["rm", i["ctr"]], capture_output=True)
        summary = (f"{len(names)} images built in {built:.0f}s, {_human(unique_size(list(sizes.values())))} of "
                   f"distinct layers ({_human(storage)} in vfs storage); every check passed; "
                   f"{time.monotonic() - t0:.0f}s")
        if keep:
            summary += f"; kept in {os.path.relpath(os.path.join(WORK, 'storage'), REPO)} (" + " ".join(_buildah()[1:]) + ")"
        return summary
    finally:
        shutil.rmtree(rendered, ignore_errors=True)
        if not keep:
            _cleanup()
            shutil.rmtree(os.path.join(WORK, "context"), ignore_errors=True)
        lock.close()


def _cleanup() -> None:
    """Every container and image of the step's storage: vfs keeps plain directories, so removing
    the storage removes every image and layer."""
    subprocess.run(_buildah() + ["rm", "--all"], capture_output=True)
    shutil.rmtree(os.path.join(WORK, "storage"), ignore_errors=True)
    shutil.rmtree(os.path.join(WORK, "run"), ignore_errors=True)
