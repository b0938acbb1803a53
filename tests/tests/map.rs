//! `ward map` against a live lab node with the real datapath: an allowed and a denied
//! connection become edges of the page `ward map -o html` writes, between every workload
//! observed, coloured by verdict and naming the deciding policy; the DOT output and an
//! exported file agree; and headless Chromium (Debian's `chromium`) renders the page to a
//! non-blank screenshot whose DOM names every workload and edge. Needs root and the
//! workspace's binaries (`cargo xtask build`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_lab::privileged::in_ci;
use ward_lab::{Node, NodeConfig, flowscene, require_root};

/// Runs `ward --socket <node's socket> <args>`, which must succeed; returns stdout.
fn ward(node: &Node, args: &[&str]) -> String {
    let out = node.ward(args);
    assert!(out.status.success(), "ward {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `<title>` of each workload and edge, as `ward map` writes them (`->` escaped).
const NODES: [&str; 3] = ["<title>shop/api</title>", "<title>shop/db</title>", "<title>shop/stranger</title>"];
const ALLOWED: &str = "<g class=\"edge forwarded\" id=\"edge-0\"><title>shop/api -&gt; shop/db 5432/TCP: ";
const DENIED: &str = "<g class=\"edge dropped\" id=\"edge-1\"><title>shop/stranger -&gt; shop/db 5432/TCP: ";

#[test]
fn map_draws_every_observed_workload_and_edge_with_its_verdict() {
    if !require_root("map_draws_every_observed_workload_and_edge_with_its_verdict") {
        return;
    }
    let config = NodeConfig { agent_args: vec!["--flow-events".into(), "all".into()], ..NodeConfig::default() };
    let node = flowscene::allowed_and_denied(config).unwrap_or_else(|e| panic!("{e}"));

    // The flow task drains the ring buffer asynchronously: redraw until both edges are there.
    let page = node.dir().join("map.html");
    let page_arg = page.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    let html = loop {
        let stdout = ward(&node, &["map", "-o", "html", "--output", &page_arg, "--namespace", "shop"]);
        assert!(stdout.is_empty(), "--output writes the file, not stdout: {stdout}");
        let html = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("reading {page_arg}: {e}"));
        if html.contains(ALLOWED) && html.contains(DENIED) {
            break html;
        }
        assert!(Instant::now() < deadline, "both edges within 15 s:\n{html}\n{}", node.agent_log_tail());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"), "{html}");
    for n in NODES {
        assert!(html.contains(n), "{n} on the page:\n{html}");
    }
    // Between the pods, exactly the two connections made (the pods also get ICMPv6 from
    // outside, neighbour discovery, which the map rightly shows as edges from `world`).
    let between_pods = html
        .split("<g class=\"edge ")
        .skip(1)
        .filter_map(|g| g.split("<title>").nth(1))
        .filter(|t| t.starts_with("shop/") && t.split(" -&gt; ").nth(1).is_some_and(|to| to.starts_with("shop/")))
        .count();
    assert_eq!(between_pods, 2, "exactly the two observed edges between pods:\n{html}");
    let title = |start: &str| -> String {
        let at = html.find(start).expect("found above") + start.len();
        html[at..].split("</title>").next().unwrap_or("").to_owned()
    };
    let (allowed, denied) = (title(ALLOWED), title(DENIED));
    let count = |s: &str, verdict: &str| s.split(verdict).next().and_then(|n| n.trim().parse::<u64>().ok());
    assert!(count(&denied, " DROPPED; denied by shop/db-from-api").is_some_and(|n| n >= 1), "{denied}");
    assert!(count(&allowed, " FORWARDED; allowed by shop/db-from-api rule 0").is_some_and(|n| n >= 1), "{allowed}");
    assert!(html.contains("<td><ul><li>shop/db-from-api rule 0</li></ul></td>"), "the table names the policy:\n{html}");
    // Self-contained: nothing to load (the SVG namespace URI is a name, not a fetch).
    for bad in ["<script", "<link", "src=", "href=", "@import", "url(http"] {
        assert!(!html.contains(bad), "self-contained, no {bad}:\n{html}");
    }

    // DOT on stdout, and the same graph from an exported file of the same flows.
    let dot = ward(&node, &["map", "-o", "dot", "--namespace", "shop"]);
    assert!(dot.contains("subgraph \"cluster_shop\""), "{dot}");
    let edge = |from: &str| {
        dot.lines().find(|l| l.starts_with(&format!("  \"shop/{from}\" -> \"shop/db\" [label=\"5432/TCP ")))
    };
    assert!(edge("api").is_some_and(|l| l.contains("color=\"#2e7d32\"")), "api's edge green: {dot}");
    assert!(edge("stranger").is_some_and(|l| l.contains("color=\"#c62828\"")), "stranger's edge red: {dot}");
    let file = node.dir().join("flows.jsonl");
    std::fs::write(&file, ward(&node, &["observe", "-o", "json", "--last", "10000"]))
        .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    let from_file = ward(&node, &["map", "-o", "dot", "--namespace", "shop", "--input-file", &file.to_string_lossy()]);
    assert_eq!(from_file, dot, "the exported flows draw the same graph");
    // A filter narrows the map: only drops.
    let drops = ward(&node, &["map", "-o", "svg", "--verdict", "DROPPED", "--namespace", "shop"]);
    assert!(drops.contains("shop/stranger -&gt; shop/db") && !drops.contains("shop/api -&gt; shop/db"), "{drops}");

    browser_check(&page, node.dir());
}

/// Debian's Chromium, if installed.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Runs headless Chromium on `url` with `extra` flags, network off, a fresh profile in
/// `profile`; returns stdout. Bounded: killed after 90 s.
fn run_chromium(bin: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let mut child = Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                assert!(status.success(), "chromium {extra:?} {url}: {status}");
                break;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {extra:?} {url} within 90 s: {other:?}");
            }
        }
    }
    reader.join().unwrap_or_default()
}

/// The page in a real browser: a screenshot that is a PNG and not blank (it compresses far
/// worse than the same window of an empty page), and a rendered DOM naming every workload
/// and edge.
fn browser_check(page: &Path, dir: &Path) {
    let Some(bin) = chromium() else {
        assert!(!in_ci(), "chromium is not installed (cargo xtask setup installs it); CI=true, so this fails");
        eprintln!("map: browser check skipped, chromium not installed (cargo xtask setup)");
        return;
    };
    let url = format!("file://{}", page.display());
    let blank = dir.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").expect("blank page");
    let shot = |target: &str, png: &Path, profile: &str| -> Vec<u8> {
        let args = vec![format!("--screenshot={}", png.display()), "--window-size=1400,900".to_owned()];
        run_chromium(&bin, &dir.join(profile), &args, target);
        std::fs::read(png).unwrap_or_else(|e| panic!("screenshot {}: {e}", png.display()))
    };
    let png = shot(&url, &dir.join("map.png"), "chromium-shot");
    let empty = shot(&format!("file://{}", blank.display()), &dir.join("blank.png"), "chromium-blank");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 4 * empty.len() && png.len() > 10_000,
        "the map's screenshot ({} bytes) has far more on it than an empty page's ({} bytes)",
        png.len(),
        empty.len()
    );
    let dom = run_chromium(&bin, &dir.join("chromium-dom"), &["--dump-dom".to_owned()], &url);
    for n in NODES.iter().chain(&[ALLOWED, DENIED]) {
        assert!(dom.contains(n), "{n} in the rendered DOM:\n{dom}");
    }
}
