//! Kubernetes 1.20, built once per machine from Debian's source (no
//! control plane is packaged as a binary in the registries these machines
//! reach): the `kubernetes` source package with its vendor tree, Go 1.19
//! and etcd from Debian. GOPATH mode with no module proxy, as Kubernetes
//! 1.20's own build does; generated code (`pkg/generated/openapi`, the e2e
//! suite's bindata) made first with the vendored generators, as its
//! Makefile does. The lab takes kube-apiserver and kube-proxy (the Services
//! oracle); `vm k8s` takes a whole cluster and the e2e suite. Everything is
//! cached under target/kubernetes/ (docs/decisions.md §35, §36, §50).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

const GO_BIN: &str = "/usr/lib/go-1.19/bin";
const SOURCE_PACKAGE: &str = "kubernetes";
/// Where Debian's source is found: a private sources list, so the
/// machine's apt configuration is never changed.
const DEB_SRC: &str = "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n";
pub const VERSION: &str = "v1.20.2";

/// target/kubernetes: the source, the Go workspace and the binaries.
pub fn dir() -> PathBuf {
    workspace_root().join("target/kubernetes")
}

/// The lab's: an API server, and kube-proxy for the kubenet-classic lab
/// (`netplane lab up --source kubernetes` finds them beside the netplane
/// binary's target directory).
pub const LAB: &[&str] = &["kube-apiserver", "kube-proxy"];
/// A cluster's (`vm k8s`): the control plane, the node components,
/// kubectl, and agnhost (the e2e suite's test image, built into one).
pub const CLUSTER: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "agnhost",
];
/// Kubernetes' own end-to-end suite (`vm k8s --conformance`).
pub const CONFORMANCE: &[&str] = &["e2e.test"];

/// What `go` builds for a binary, and how: a command, the e2e suite (a
/// test binary), or a test image.
fn go_target(name: &str) -> (&'static str, String) {
    match name {
        "e2e.test" => ("test", "./test/e2e".into()),
        "agnhost" => ("build", "./test/images/agnhost".into()),
        _ => ("build", format!("./cmd/{name}")),
    }
}

/// Builds those of `binaries` that are not cached.
pub fn ensure(binaries: &[&str]) -> Result<()> {
    let missing: Vec<&str> = binaries
        .iter()
        .copied()
        .filter(|b| !dir().join(b).exists())
        .collect();
    if missing.is_empty() {
        eprintln!("   {}: cached ({})", binaries.join(", "), dir().display());
        return Ok(());
    }
    let started = Instant::now();
    eprintln!(
        "== {} {VERSION} from Debian's source (once per machine)",
        missing.join(", ")
    );
    let src = fetch_source()?;
    let gopath = dir().join("gopath");
    let k8s = gopath.join("src/k8s.io/kubernetes");
    std::fs::create_dir_all(k8s.parent().expect("has a parent"))?;
    if !k8s.exists() {
        std::os::unix::fs::symlink(&src, &k8s)?;
    }
    let go = |args: &[&str]| -> Result<()> {
        let path = format!("{GO_BIN}:{}", std::env::var("PATH").unwrap_or_default());
        let gopath = gopath.to_str().expect("utf-8 path");
        let cache = dir().join("gocache");
        // Go finds the vendor tree by the logical path under GOPATH, which
        // it takes from PWD (the directory is reached through a symlink).
        let pwd = k8s.to_str().expect("utf-8 path");
        let env = [
            ("PWD", pwd),
            ("PATH", path.as_str()),
            ("GOPATH", gopath),
            ("GO111MODULE", "off"),
            ("GOPROXY", "off"),
            ("GOFLAGS", ""),
            ("CGO_ENABLED", "0"),
            ("GOCACHE", cache.to_str().expect("utf-8 path")),
        ];
        run_in(&k8s, "go", args, &env)
    };
    if missing.contains(&"kube-apiserver") {
        generate_openapi(&k8s, &gopath, &go)?;
    }
    if missing.contains(&"e2e.test") {
        generate_bindata(&k8s, &go)?;
    }
    let version = "k8s.io/kubernetes/vendor/k8s.io/component-base/version";
    let ldflags = format!(
        "-X {version}.gitVersion={VERSION} -X {version}.gitMajor=1 -X {version}.gitMinor=20"
    );
    for name in missing {
        let t = Instant::now();
        eprintln!("   building {name}");
        let out = dir().join(format!("{name}.partial"));
        let (verb, package) = go_target(name);
        let mut args = vec![verb];
        if verb == "test" {
            args.push("-c");
        }
        let out_str = out.to_str().expect("utf-8 path");
        args.extend(["-o", out_str, "-ldflags", &ldflags, &package]);
        go(&args)?;
        std::fs::rename(&out, dir().join(name))?;
        eprintln!("   {name}: {:.0} s", t.elapsed().as_secs_f64());
    }
    eprintln!(
        "   built in {:.0} s, in {}",
        started.elapsed().as_secs_f64(),
        dir().display()
    );
    Ok(())
}

/// The e2e suite's embedded manifests and test data
/// (`test/e2e/generated/bindata.go`), made with the vendored go-bindata
/// as hack/generate-bindata.sh does.
fn generate_bindata(k8s: &Path, go: &dyn Fn(&[&str]) -> Result<()>) -> Result<()> {
    let bindata = dir().join("go-bindata");
    eprintln!("   generating test/e2e/generated/bindata.go");
    go(&[
        "build",
        "-o",
        bindata.to_str().expect("utf-8 path"),
        "./vendor/github.com/go-bindata/go-bindata/go-bindata",
    ])?;
    let bindata = bindata.to_str().expect("utf-8 path");
    run_in(
        k8s,
        bindata,
        &[
            "-nometadata",
            "-o",
            "test/e2e/generated/bindata.go",
            "-pkg",
            "generated",
            "-ignore",
            ".jpg",
            "-ignore",
            ".png",
            "-ignore",
            ".md",
            "-ignore",
            "BUILD(\\.bazel)?",
            "test/conformance/testdata/...",
            "test/e2e/testing-manifests/...",
            "test/e2e_node/testing-manifests/...",
            "test/images/...",
            "test/fixtures/...",
        ],
        &[],
    )
}

/// `pkg/generated/openapi`, which kube-apiserver needs, generated with the
/// vendored openapi-gen.
fn generate_openapi(k8s: &Path, gopath: &Path, go: &dyn Fn(&[&str]) -> Result<()>) -> Result<()> {
    let openapi_gen = dir().join("openapi-gen");
    eprintln!("   building openapi-gen");
    go(&[
        "build",
        "-o",
        openapi_gen.to_str().expect("utf-8 path"),
        "./vendor/k8s.io/kube-openapi/cmd/openapi-gen",
    ])?;
    eprintln!("   generating pkg/generated/openapi");
    let inputs = openapi_inputs(k8s)?;
    let report = dir().join("openapi-violations.txt");
    // openapi-gen exits non-zero for the API rule violations Kubernetes
    // itself lists as known; the file is what matters.
    let _ = Command::new(&openapi_gen)
        .args(["--logtostderr", "-i", &inputs])
        .args(["-p", "k8s.io/kubernetes/pkg/generated/openapi"])
        .args(["-O", "zz_generated.openapi"])
        .args(["-h", "hack/boilerplate/boilerplate.generatego.txt"])
        .args(["-r", report.to_str().expect("utf-8 path")])
        .env("GOPATH", gopath)
        .env("GO111MODULE", "off")
        .env("PWD", k8s)
        .current_dir(k8s)
        .status()
        .context("running openapi-gen")?;
    let generated = k8s.join("pkg/generated/openapi/zz_generated.openapi.go");
    if !generated.exists() {
        bail!("openapi-gen made no {}", generated.display());
    }
    Ok(())
}

/// Downloads and unpacks Debian's source package (its own apt lists, in
/// target/kubernetes/apt); returns the source tree.
fn fetch_source() -> Result<PathBuf> {
    let root = dir();
    let tree = root.join("src");
    if tree.join("cmd/kube-apiserver").exists() {
        return Ok(tree);
    }
    let apt = root.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let list = apt.join("sources.list");
    std::fs::write(&list, DEB_SRC)?;
    let opts = [
        format!("-oDir::Etc::SourceList={}", list.display()),
        "-oDir::Etc::SourceParts=/dev/null".to_string(),
        format!("-oDir::State::Lists={}", apt.join("lists").display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
        // The download runs as root into our own directory.
        "-oAPT::Sandbox::User=root".to_string(),
    ];
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let download = root.join("download");
    std::fs::create_dir_all(&download)?;
    eprintln!("   fetching Debian's `{SOURCE_PACKAGE}` source package");
    run_in(
        &download,
        "apt-get",
        &[&opts[..], &["-qq", "update"]].concat(),
        &[],
    )?;
    run_in(
        &download,
        "apt-get",
        &[
            &opts[..],
            &["-qq", "source", "--download-only", SOURCE_PACKAGE],
        ]
        .concat(),
        &[],
    )?;
    let orig = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.gz"))
        .context("no .orig.tar.gz downloaded")?;
    let unpack = root.join("unpack");
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack)?;
    run_in(
        &unpack,
        "tar",
        &["xzf", orig.to_str().expect("utf-8 path")],
        &[],
    )?;
    let top = std::fs::read_dir(&unpack)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .context("the source archive holds no directory")?;
    std::fs::rename(&top, &tree)?;
    Ok(tree)
}

/// The packages that ask for OpenAPI definitions, as Kubernetes 1.20's
/// Makefile.generated_files finds them: Go files with a `+k8s:` tag,
/// staging named as vendor, code-generator and sample-apiserver left out.
fn openapi_inputs(k8s: &Path) -> Result<String> {
    let script = r#"find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) -type f -name '*.go' \
  | sed 's|^./staging/src|vendor|; s|^./||' \
  | xargs grep -l '^// *+k8s:' \
  | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
  | xargs grep -l '+k8s:openapi-gen=' \
  | xargs -n1 dirname | LC_ALL=C sort -u"#;
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(k8s)
        .output()
        .context("finding the OpenAPI packages")?;
    let dirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|d| format!("k8s.io/kubernetes/{d}"))
        .collect();
    if dirs.len() < 50 {
        bail!("only {} OpenAPI packages found", dirs.len());
    }
    Ok(dirs.join(","))
}

fn run_in(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
