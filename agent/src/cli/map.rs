//! `ward map`: the observed workload-to-workload graph ([`crate::flows::map`]) as Graphviz
//! DOT, as an SVG drawn by our own layout (namespaces as columns, workloads as rounded
//! boxes, edges as arrows coloured by verdict), or as one self-contained HTML page holding
//! that SVG, a tooltip per edge and a table of edges with their deciding policies and newest
//! flows. Flows come from the agent's history or an exported file, chosen by the same flags
//! and filters as `ward observe`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::observe::{ObserveError, fetch, parse_query_args};
use crate::flows::history::Query;
use crate::flows::map::{Edge, EdgeClass, Graph, NodeId, NodeKind, build};
use crate::flows::record::{FlowTime, FlowVerdict};

pub const USAGE: &str = "\
Usage: ward map [OPTIONS] [FILTERS]

The observed workload-to-workload graph: namespaces as groups, workloads as nodes, one edge
per source, destination, port and protocol, labelled with its connection count and coloured
by verdict (green forwarded, red dropped, orange both).

Options:
  -o, --format FORMAT    svg (default), dot or html (the SVG with details per edge)
  --output FILE          write there instead of standard output
  --last N               only the N most recent matching flows (default: the whole history)
  --since T, --until T   an RFC 3339 time or an age (30s, 5m, 2h, 1d)
  --input-file FILE      read flows from a JSON-lines file instead of the agent

Filters: as `ward observe --help` (--namespace NS, --pod NS/NAME, --verdict V, --not, ...).
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Dot,
    Html,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapArgs {
    pub query: Query,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub input_file: Option<PathBuf>,
    pub help: bool,
}

impl MapArgs {
    pub fn parse(args: &[String], now: FlowTime) -> Result<MapArgs, ObserveError> {
        let mut format = Format::Svg;
        let mut output = None;
        let q = parse_query_args(args, now, None, |flag, value| {
            match flag {
                "-o" | "--format" => {
                    let v = value()?;
                    format = match v.as_str() {
                        "svg" => Format::Svg,
                        "dot" => Format::Dot,
                        "html" => Format::Html,
                        _ => {
                            return Err(ObserveError::BadValue {
                                flag: flag.to_owned(),
                                value: v,
                                why: "expected svg, dot or html".into(),
                            });
                        }
                    };
                }
                "--output" => output = Some(PathBuf::from(value()?)),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if q.follow {
            return Err(ObserveError::Unexpected("--follow (a map is drawn once)".into()));
        }
        Ok(MapArgs { query: q.query, format, output, input_file: q.input_file, help: q.help })
    }
}

/// Text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // XML 1.0 has no other control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// A DOT double-quoted string.
fn dot_quote(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                o.push('\\');
                o.push(c);
            }
            '\n' | '\r' => o.push(' '),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Stroke colour per edge class.
fn colour(class: EdgeClass) -> &'static str {
    match class {
        EdgeClass::Forwarded => "#2e7d32",
        EdgeClass::Dropped => "#c62828",
        EdgeClass::Mixed => "#ef6c00",
    }
}

/// The label of an edge: `port/proto count`.
fn edge_label(e: &Edge) -> String {
    format!("{} {}", e.service(), e.total())
}

/// A node's unique id in DOT and SVG.
fn node_key(n: &NodeId) -> String {
    match n.kind {
        NodeKind::Workload => format!("{}/{}", n.namespace, n.name),
        NodeKind::External => format!("outside:{}", n.name),
    }
}

/// One line describing an edge: ends, service, counts per verdict, deciding policies.
fn edge_summary(e: &Edge) -> String {
    let mut counts: Vec<String> = Vec::new();
    for v in FlowVerdict::ALL {
        let n = e.count(v);
        if n > 0 {
            counts.push(format!("{n} {}", v.as_str()));
        }
    }
    let mut s = format!("{} -> {} {}: {}", e.from.label(), e.to.label(), e.service(), counts.join(", "));
    if !e.allowed_by.is_empty() {
        let _ = write!(s, "; allowed by {}", e.allowed_by.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    if !e.denied_by.is_empty() {
        let _ = write!(s, "; denied by {}", e.denied_by.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    s
}

/// Graphviz DOT: one `cluster_<namespace>` subgraph per namespace, outside addresses
/// outside any cluster.
pub fn dot(g: &Graph) -> String {
    let mut o = String::from("digraph ward_map {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for (ns, members) in g.groups() {
        let indent = if ns.is_empty() { "  " } else { "    " };
        if !ns.is_empty() {
            let _ = writeln!(o, "  subgraph {} {{\n    label={};", dot_quote(&format!("cluster_{ns}")), dot_quote(ns));
        }
        for n in members {
            let shape = if n.kind == NodeKind::External { ", shape=ellipse" } else { "" };
            let _ = writeln!(o, "{indent}{} [label={}{shape}];", dot_quote(&node_key(n)), dot_quote(&n.name));
        }
        if !ns.is_empty() {
            o.push_str("  }\n");
        }
    }
    for e in &g.edges {
        let _ = writeln!(
            o,
            "  {} -> {} [label={}, color={}, fontcolor={}, tooltip={}];",
            dot_quote(&node_key(&e.from)),
            dot_quote(&node_key(&e.to)),
            dot_quote(&edge_label(e)),
            dot_quote(colour(e.class())),
            dot_quote(colour(e.class())),
            dot_quote(&edge_summary(e))
        );
    }
    o.push_str("}\n");
    o
}

// The SVG layout: one column per group, nodes stacked in it.
const MARGIN: f64 = 40.0;
const COL_W: f64 = 200.0;
const COL_GAP: f64 = 160.0;
const HEADER: f64 = 36.0;
const NODE_W: f64 = 160.0;
const NODE_H: f64 = 34.0;
const NODE_GAP: f64 = 26.0;

/// Where each node is drawn: (x, y) of its box's top-left corner.
fn layout(g: &Graph) -> (Vec<(f64, f64)>, f64, f64) {
    let mut at = vec![(0.0, 0.0); g.nodes.len()];
    let mut tallest: f64 = 0.0;
    let mut i = 0;
    let groups = g.groups();
    for (c, (_, members)) in groups.iter().enumerate() {
        let x = MARGIN + c as f64 * (COL_W + COL_GAP) + (COL_W - NODE_W) / 2.0;
        for (r, _) in members.iter().enumerate() {
            at[i] = (x, MARGIN + HEADER + 10.0 + r as f64 * (NODE_H + NODE_GAP));
            i += 1;
        }
        tallest = tallest.max(members.len() as f64);
    }
    let width = 2.0 * MARGIN + groups.len() as f64 * COL_W + groups.len().saturating_sub(1) as f64 * COL_GAP;
    let height = 2.0 * MARGIN + HEADER + 20.0 + tallest * (NODE_H + NODE_GAP);
    (at, width.max(200.0), height.max(120.0))
}

/// The SVG document (standalone, no external references).
pub fn svg(g: &Graph) -> String {
    let (at, width, height) = layout(g);
    let index = |n: &NodeId| g.nodes.iter().position(|m| m == n);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    o.push_str("<defs>\n");
    for class in [EdgeClass::Forwarded, EdgeClass::Dropped, EdgeClass::Mixed] {
        let _ = writeln!(
            o,
            "<marker id=\"arrow-{}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" \
             markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{}\"/></marker>",
            class.as_str(),
            colour(class)
        );
    }
    o.push_str("</defs>\n");
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>");
    // Group boxes.
    for (c, (ns, _)) in g.groups().iter().enumerate() {
        let x = MARGIN + c as f64 * (COL_W + COL_GAP);
        let title = if ns.is_empty() { "outside the cluster" } else { ns };
        let _ = writeln!(
            o,
            "<g class=\"namespace\"><rect x=\"{x:.1}\" y=\"{MARGIN:.1}\" width=\"{COL_W:.1}\" height=\"{:.1}\" rx=\"6\" \
             fill=\"#f4f6f8\" stroke=\"#90a4ae\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
             font-weight=\"bold\">{}</text></g>",
            height - 2.0 * MARGIN,
            x + COL_W / 2.0,
            MARGIN + 22.0,
            xml_escape(title)
        );
    }
    // Edges under the nodes. Edges between the same two nodes fan out so their labels part.
    let mut seen_pairs: Vec<(usize, usize)> = Vec::new();
    for (k, e) in g.edges.iter().enumerate() {
        let (Some(a), Some(b)) = (index(&e.from), index(&e.to)) else { continue };
        let nth = seen_pairs.iter().filter(|p| **p == (a, b) || **p == (b, a)).count() as f64;
        seen_pairs.push((a, b));
        let ((ax, ay), (bx, by)) = (at[a], at[b]);
        let (ay, by) = (ay + NODE_H / 2.0, by + NODE_H / 2.0);
        let class = e.class();
        let (path, lx, ly) = if a == b {
            // A workload talking to itself: a loop on its right side.
            let (x, y) = (ax + NODE_W, ay);
            (
                format!(
                    "M{x:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {x:.1},{:.1}",
                    y - 8.0,
                    x + 50.0,
                    y - 30.0,
                    x + 50.0,
                    y + 30.0,
                    y + 8.0
                ),
                x + 44.0,
                y - 14.0 - nth * 14.0,
            )
        } else if (ax - bx).abs() < 1.0 {
            // Same column: an arc out to the right.
            let (x, bend) = (ax + NODE_W, 60.0 + nth * 24.0);
            (
                format!("M{x:.1},{ay:.1} C{:.1},{ay:.1} {:.1},{by:.1} {x:.1},{by:.1}", x + bend, x + bend),
                x + bend * 0.75 + 4.0,
                (ay + by) / 2.0,
            )
        } else {
            let (sx, tx) = if bx > ax { (ax + NODE_W, bx) } else { (ax, bx + NODE_W) };
            let mid = (sx + tx) / 2.0;
            let lift = nth * 16.0;
            (
                format!("M{sx:.1},{ay:.1} C{mid:.1},{:.1} {mid:.1},{:.1} {tx:.1},{by:.1}", ay - lift, by - lift),
                mid,
                (ay + by) / 2.0 - 4.0 - lift,
            )
        };
        let dash = if class == EdgeClass::Dropped { " stroke-dasharray=\"6 3\"" } else { "" };
        let _ = writeln!(
            o,
            "<g class=\"edge {cls}\" id=\"edge-{k}\"><title>{title}</title><path d=\"{path}\" fill=\"none\" \
             stroke=\"{col}\" stroke-width=\"2\"{dash} marker-end=\"url(#arrow-{cls})\"/><text x=\"{lx:.1}\" \
             y=\"{ly:.1}\" text-anchor=\"middle\" fill=\"{col}\">{label}</text></g>",
            cls = class.as_str(),
            title = xml_escape(&edge_summary(e)),
            col = colour(class),
            label = xml_escape(&edge_label(e)),
        );
    }
    for (n, (x, y)) in g.nodes.iter().zip(&at) {
        let (fill, rx) = if n.kind == NodeKind::External { ("#fff8e1", NODE_H / 2.0) } else { ("#e3f2fd", 8.0) };
        let _ = writeln!(
            o,
            "<g class=\"node\"><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{NODE_W:.1}\" \
             height=\"{NODE_H:.1}\" rx=\"{rx:.1}\" fill=\"{fill}\" stroke=\"#37474f\"/><text x=\"{:.1}\" y=\"{:.1}\" \
             text-anchor=\"middle\">{}</text></g>",
            xml_escape(&n.label()),
            x + NODE_W / 2.0,
            y + NODE_H / 2.0 + 4.0,
            xml_escape(&n.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// One HTML page: the SVG inline, then a table of every edge with its counts, deciding
/// policies and newest flows. No scripts, fonts or anything else fetched from elsewhere.
pub fn html(g: &Graph) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>Ward map</title>\n<style>\n\
         body { font-family: sans-serif; margin: 1.5em; color: #263238; }\n\
         table { border-collapse: collapse; margin-top: 1.5em; }\n\
         th, td { border: 1px solid #b0bec5; padding: 4px 8px; text-align: left; vertical-align: top; }\n\
         th { background: #eceff1; }\n\
         .forwarded { color: #2e7d32; } .dropped { color: #c62828; } .mixed { color: #ef6c00; }\n\
         g.edge:hover path { stroke-width: 4; }\n\
         ul { margin: 0; padding-left: 1.2em; }\n\
         </style>\n</head>\n<body>\n<h1>Ward map</h1>\n",
    );
    let _ = writeln!(
        o,
        "<p>{} workloads and addresses, {} edges. Hover over an edge for its details.</p>",
        g.nodes.len(),
        g.edges.len()
    );
    o.push_str(&svg(g));
    o.push_str(
        "<table id=\"edges\">\n<tr><th>From</th><th>To</th><th>Service</th><th>Verdict</th><th>Forwarded</th>\
         <th>Dropped</th><th>Allowed by</th><th>Denied by</th><th>Recent flows</th></tr>\n",
    );
    let list = |items: Vec<String>| -> String {
        if items.is_empty() {
            return String::new();
        }
        let li: String = items.iter().map(|i| format!("<li>{}</li>", xml_escape(i))).collect();
        format!("<ul>{li}</ul>")
    };
    for (k, e) in g.edges.iter().enumerate() {
        let recent = e
            .recent
            .iter()
            .map(|r| format!("{} {} {} {}", r.time, r.verdict.as_str(), r.direction.as_str(), r.reason))
            .collect();
        let _ = writeln!(
            o,
            "<tr id=\"row-{k}\" class=\"{cls}\"><td>{}</td><td>{}</td><td>{}</td><td>{cls}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            xml_escape(&e.from.label()),
            xml_escape(&e.to.label()),
            xml_escape(&e.service()),
            e.count(FlowVerdict::Forwarded) + e.count(FlowVerdict::Audit),
            e.count(FlowVerdict::Dropped) + e.count(FlowVerdict::Error),
            list(e.allowed_by.iter().cloned().collect()),
            list(e.denied_by.iter().cloned().collect()),
            list(recent),
            cls = e.class().as_str(),
        );
    }
    o.push_str("</table>\n</body>\n</html>\n");
    o
}

/// The graph in the chosen format.
pub fn render(g: &Graph, format: Format) -> String {
    match format {
        Format::Svg => svg(g),
        Format::Dot => dot(g),
        Format::Html => html(g),
    }
}

fn write_out(path: Option<&Path>, text: &str) -> std::io::Result<()> {
    match path {
        Some(p) => std::fs::write(p, text),
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        }
    }
}

/// Runs `ward map` against the agent at `socket` (or the input file).
pub fn run(socket: &Path, raw: &[String]) -> ExitCode {
    let args = match MapArgs::parse(raw, FlowTime::now()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ward map: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let flows = match fetch(socket, &args.query, args.input_file.as_deref(), "map") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return if args.input_file.is_some() { ExitCode::FAILURE } else { ExitCode::from(2) };
        }
    };
    let text = render(&build(&flows), args.format);
    match write_out(args.output.as_deref(), &text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &args.output {
                Some(p) => eprintln!("ward map: writing {}: {e}", p.display()),
                None => eprintln!("ward map: writing standard output: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::filter::tests::flow;
    use crate::flows::map::tests::sample;
    use crate::flows::record::TrafficDirection;

    fn args(s: &str) -> Result<MapArgs, ObserveError> {
        let v: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        MapArgs::parse(&v, FlowTime(1_000_000_000_000))
    }

    #[test]
    fn map_reads_its_format_and_file_and_observes_filters() {
        let a = args("-o html --output /tmp/m.html --namespace shop --last 50").expect("parses");
        assert_eq!(
            (a.format, a.output.as_deref(), a.query.last),
            (Format::Html, Some(Path::new("/tmp/m.html")), Some(50))
        );
        assert_eq!(a.query.filter.terms.len(), 1);
        let d = args("").expect("parses");
        assert_eq!((d.format, d.query.last, d.output), (Format::Svg, None, None), "the whole history by default");
        assert_eq!(args("--format=dot").expect("parses").format, Format::Dot);
        assert!(matches!(args("-o png"), Err(ObserveError::BadValue { .. })));
        assert!(matches!(args("--follow"), Err(ObserveError::Unexpected(_))));
        assert_eq!(args("--not"), Err(ObserveError::DanglingNot));
    }

    #[test]
    fn dot_has_a_cluster_per_namespace_and_coloured_labelled_edges() {
        let d = dot(&build(&sample()));
        assert!(d.starts_with("digraph ward_map {\n") && d.ends_with("}\n"), "{d}");
        assert!(d.contains("  subgraph \"cluster_shop\" {\n    label=\"shop\";\n"), "{d}");
        assert!(d.contains("  subgraph \"cluster_billing\" {\n    label=\"billing\";\n    \"billing/worker\" [label=\"worker\"];\n  }\n"), "{d}");
        assert!(d.contains("    \"shop/web\" [label=\"web\"];"), "{d}");
        assert!(d.contains("\n  \"outside:world\" [label=\"world\", shape=ellipse];"), "outside any cluster: {d}");
        assert!(d.contains("  \"shop/api\" -> \"shop/db\" [label=\"5432/TCP 2\", color=\"#ef6c00\""), "mixed: {d}");
        assert!(d.contains("  \"shop/stranger\" -> \"shop/db\" [label=\"5432/TCP 1\", color=\"#c62828\""), "{d}");
        assert!(d.contains("  \"shop/web\" -> \"outside:world\" [label=\"443/TCP 2\", color=\"#2e7d32\""), "{d}");
        assert!(d.contains("allowed by shop/db-from-api rule 0; denied by shop/db-from-api"), "{d}");
        assert_eq!(d.matches("\" -> \"").count(), 4, "{d}");
        // A hostile name cannot end the string.
        let mut f = flow("shop/a\"b\\", "shop/db", 1, FlowVerdict::Forwarded, TrafficDirection::Ingress);
        f.source.labels.clear();
        let d = dot(&build(&[f]));
        assert!(d.contains("\"shop/a\\\"b\\\\\" [label=\"a\\\"b\\\\\"];"), "{d}");
    }

    /// Every element with `class` containing `class`, and the text of its `<title>`.
    fn titles(doc: &roxmltree::Document, class: &str) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.attribute("class").is_some_and(|c| c.split(' ').any(|w| w == class)))
            .filter_map(|n| n.children().find(|c| c.has_tag_name("title")).and_then(|t| t.text()).map(str::to_owned))
            .collect()
    }

    #[test]
    fn svg_is_well_formed_xml_naming_every_workload_and_edge() {
        let g = build(&sample());
        let text = svg(&g);
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("not XML: {e}\n{text}"));
        assert!(doc.root_element().has_tag_name(("http://www.w3.org/2000/svg", "svg")));
        assert_eq!(
            titles(&doc, "node"),
            ["billing/worker", "shop/api", "shop/db", "shop/stranger", "shop/web", "world"]
        );
        let edges = titles(&doc, "edge");
        assert_eq!(edges.len(), 4, "{edges:?}");
        assert!(edges.contains(&"shop/api -> shop/db 5432/TCP: 1 FORWARDED, 1 DROPPED; allowed by shop/db-from-api rule 0; denied by shop/db-from-api".to_owned()), "{edges:?}");
        assert!(edges.contains(&"shop/web -> world 443/TCP: 2 FORWARDED".to_owned()), "{edges:?}");
        let dropped = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("edge dropped"))
            .unwrap_or_else(|| panic!("a dropped edge: {text}"));
        let path = dropped.children().find(|c| c.has_tag_name("path")).unwrap_or_else(|| panic!("a path"));
        assert_eq!(path.attribute("stroke"), Some("#c62828"));
        assert_eq!(path.attribute("marker-end"), Some("url(#arrow-dropped)"));
        let labels: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
        for want in [
            "shop",
            "billing",
            "outside the cluster",
            "worker",
            "api",
            "db",
            "stranger",
            "web",
            "world",
            "5432/TCP 2",
            "443/TCP 2",
        ] {
            assert!(labels.contains(&want), "{want} drawn: {labels:?}");
        }
        assert!(!text.contains("href=\"http") && !text.contains("<script"), "self-contained: {text}");
    }

    #[test]
    fn hostile_names_are_escaped_in_svg_and_html() {
        let hostile = "x<script>&\"'";
        let mut f = flow(&format!("shop/{hostile}"), "shop/db", 80, FlowVerdict::Dropped, TrafficDirection::Ingress);
        f.source.labels.clear();
        f.reason = "</td><b>".into();
        f.ingress_denied_by.push(crate::flows::filter::tests::attribution("shop", "p<&>", "NetworkPolicy", None));
        let g = build(&[f]);
        for (what, text) in [("svg", svg(&g)), ("html", html(&g))] {
            assert!(!text.contains("<script"), "{what}: {text}");
            let xml = text.replace("<!DOCTYPE html>", "");
            let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{what} not XML: {e}\n{text}"));
            let all: String = doc.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect();
            assert!(all.contains(&format!("shop/{hostile}")), "{what} names it intact: {all}");
            assert!(all.contains("p<&>"), "{what}: {all}");
            assert!(what == "svg" || all.contains("</td><b>"), "{what}: {all}");
        }
    }

    #[test]
    fn html_embeds_the_svg_and_a_row_per_edge_with_policies_and_recent_flows() {
        let g = build(&sample());
        let text = html(&g);
        let xml = text.replace("<!DOCTYPE html>", "");
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("not XML: {e}\n{text}"));
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name(("http://www.w3.org/2000/svg", "svg"))).count(), 1);
        let rows: Vec<_> =
            doc.descendants().filter(|n| n.attribute("id").is_some_and(|i| i.starts_with("row-"))).collect();
        assert_eq!(rows.len(), g.edges.len());
        let api = rows
            .iter()
            .find(|r| {
                r.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).take(2).eq(["shop/api", "shop/db"])
            })
            .unwrap_or_else(|| panic!("an api row: {text}"));
        let cells: Vec<String> = api
            .children()
            .filter(|c| c.has_tag_name("td"))
            .map(|c| c.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect::<Vec<_>>().join("|"))
            .collect();
        assert_eq!(
            &cells[..8],
            ["shop/api", "shop/db", "5432/TCP", "mixed", "1", "1", "shop/db-from-api rule 0", "shop/db-from-api"]
        );
        assert_eq!(cells[8].split('|').count(), 3, "three records: {cells:?}");
        assert!(cells[8].starts_with("2023-11-14T22:13:20.000000005Z DROPPED INGRESS policy_denied"), "{cells:?}");
        for bad in ["<script", "src=", "href=\"http", "@import", "url(http"] {
            assert!(!text.contains(bad), "self-contained ({bad}): {text}");
        }
    }
}
