//! A plan's assets drawn as a graph, in SVG made on the server: each asset in the column
//! of its longest path from a source, ordered within its column by where its upstreams
//! sit, with an edge from each upstream. Plans are tens or hundreds of assets, so one
//! pass of this ordering reads well; past [`MAX_DRAWN`] the page lists them instead.

use maud::{Markup, html};

/// The most assets drawn; a larger plan is listed, not drawn.
pub const MAX_DRAWN: usize = 400;

const NODE_WIDTH: f64 = 176.0;
const NODE_HEIGHT: f64 = 42.0;
const COLUMN_GAP: f64 = 64.0;
const ROW_GAP: f64 = 14.0;
const MARGIN: f64 = 10.0;
/// Characters of a name shown in its box; the whole name is its tooltip.
const NAME_CHARS: usize = 24;

/// One asset to draw.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its position in the plan, which `upstream` refers to.
    pub index: usize,
    pub name: String,
    /// The line under the name (`812 / 1,000`).
    pub sub: String,
    /// A class for its state (`state-running`, `has-failed`).
    pub class: String,
    pub href: Option<String>,
    /// The indexes of the assets it reads.
    pub upstream: Vec<usize>,
}

/// Column of each node: the longest path to it from a node with no upstream. `nodes` is
/// indexed by `Node::index`; upstream indexes out of range are ignored, and a cycle (which
/// a compiled plan cannot have) is cut where it closes.
fn columns(nodes: &[Node]) -> Vec<usize> {
    const UNSET: usize = usize::MAX;
    let mut column = vec![UNSET; nodes.len()];
    let mut on_path = vec![false; nodes.len()];
    // Iterative depth-first walk up the upstream edges.
    for start in 0..nodes.len() {
        let mut stack = vec![(start, 0usize)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if column[node] != UNSET {
                stack.pop();
                continue;
            }
            on_path[node] = true;
            let ups = &nodes[node].upstream;
            if let Some(&up) = ups.get(*next) {
                *next += 1;
                if up < nodes.len() && column[up] == UNSET && !on_path[up] {
                    stack.push((up, 0));
                }
                continue;
            }
            let deepest = ups
                .iter()
                .filter(|&&up| up < nodes.len() && column[up] != UNSET)
                .map(|&up| column[up] + 1)
                .max()
                .unwrap_or(0);
            column[node] = deepest;
            on_path[node] = false;
            stack.pop();
        }
    }
    column
}

/// Each node's (column, row): rows within a column ordered by the mean row of the node's
/// upstreams (the barycenter heuristic), ties by plan order.
fn layout(nodes: &[Node]) -> Vec<(usize, usize)> {
    let column = columns(nodes);
    let width = column.iter().copied().max().map_or(0, |c| c + 1);
    let mut by_column: Vec<Vec<usize>> = vec![Vec::new(); width];
    for (node, &c) in column.iter().enumerate() {
        by_column[c].push(node);
    }
    let mut row = vec![0usize; nodes.len()];
    for members in &mut by_column {
        let key = |node: usize| {
            let ups: Vec<f64> = nodes[node]
                .upstream
                .iter()
                .filter(|&&up| up < nodes.len() && column[up] < column[node])
                .map(|&up| row[up] as f64)
                .collect();
            if ups.is_empty() { node as f64 } else { ups.iter().sum::<f64>() / ups.len() as f64 }
        };
        let mut keyed: Vec<(f64, usize)> = members.iter().map(|&node| (key(node), node)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (r, &(_, node)) in keyed.iter().enumerate() {
            row[node] = r;
        }
        *members = keyed.into_iter().map(|(_, node)| node).collect();
    }
    column.into_iter().zip(row).collect()
}

fn position((column, row): (usize, usize)) -> (f64, f64) {
    (MARGIN + column as f64 * (NODE_WIDTH + COLUMN_GAP), MARGIN + row as f64 * (NODE_HEIGHT + ROW_GAP))
}

/// The graph as an `<svg>`, or `None` past [`MAX_DRAWN`] assets. `nodes[i].index` must be `i`.
pub fn draw(nodes: &[Node], label: &str) -> Option<Markup> {
    if nodes.is_empty() || nodes.len() > MAX_DRAWN {
        return None;
    }
    let places = layout(nodes);
    let width = places.iter().map(|&p| position(p).0).fold(0.0, f64::max) + NODE_WIDTH + MARGIN;
    let height = places.iter().map(|&p| position(p).1).fold(0.0, f64::max) + NODE_HEIGHT + MARGIN;
    let mut edges = String::new();
    for (node, &place) in nodes.iter().zip(&places) {
        let (x2, y2) = position(place);
        for &up in node.upstream.iter().filter(|&&up| up < nodes.len()) {
            let (x1, y1) = position(places[up]);
            let (sx, sy) = (x1 + NODE_WIDTH, y1 + NODE_HEIGHT / 2.0);
            let (ex, ey) = (x2, y2 + NODE_HEIGHT / 2.0);
            let bend = (ex - sx).abs() / 2.0;
            edges.push_str(&format!(
                "M{sx:.1},{sy:.1} C{:.1},{sy:.1} {:.1},{ey:.1} {ex:.1},{ey:.1} ",
                sx + bend,
                ex - bend
            ));
        }
    }
    Some(html! {
        svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(label)
            width=(format!("{width:.0}")) height=(format!("{height:.0}"))
            viewBox=(format!("0 0 {width:.0} {height:.0}")) {
            path class="edge" d=(edges) {}
            @for (node, &place) in nodes.iter().zip(&places) {
                @let (x, y) = position(place);
                @let shown: String = node.name.chars().take(NAME_CHARS).collect();
                @let shown = if shown.len() < node.name.len() { format!("{shown}…") } else { shown };
                @let body = html! {
                    title { (node.name) }
                    rect x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(NODE_WIDTH) height=(NODE_HEIGHT) {}
                    text x=(format!("{:.1}", x + 8.0)) y=(format!("{:.1}", y + 17.0)) { (shown) }
                    text class="sub" x=(format!("{:.1}", x + 8.0)) y=(format!("{:.1}", y + 33.0)) { (node.sub) }
                };
                g class={ "node " (node.class) } data-asset=(node.index) {
                    @if let Some(href) = &node.href {
                        a href=(href) { (body) }
                    } @else {
                        (body)
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(index: usize, upstream: &[usize]) -> Node {
        Node {
            index,
            name: format!("a{index}"),
            sub: String::new(),
            class: String::new(),
            href: None,
            upstream: upstream.to_vec(),
        }
    }

    #[test]
    fn an_asset_sits_one_column_right_of_its_deepest_upstream() {
        // 0 → 1 → 3, 0 → 2 → 3, 4 alone, 5 ← 3 and 0
        let nodes = vec![
            node(0, &[]),
            node(1, &[0]),
            node(2, &[0]),
            node(3, &[1, 2]),
            node(4, &[]),
            node(5, &[3, 0]),
        ];
        assert_eq!(columns(&nodes), vec![0, 1, 1, 2, 0, 3]);
        let places = layout(&nodes);
        assert_eq!(places[0], (0, 0));
        assert_eq!(places[4], (0, 1));
    }

    #[test]
    fn a_cycle_or_an_unknown_upstream_does_not_hang_the_drawing() {
        let nodes = vec![node(0, &[1]), node(1, &[0]), node(2, &[9])];
        let columns = columns(&nodes);
        assert_eq!(columns.len(), 3);
        assert_eq!(columns[2], 0);
        assert!(draw(&nodes, "g").is_some());
    }

    #[test]
    fn a_long_chain_is_walked_without_recursion() {
        let nodes: Vec<Node> = (0..MAX_DRAWN).map(|i| node(i, if i == 0 { &[] } else { &[0] })).collect();
        let chain: Vec<Node> =
            (0..50_000).map(|i| node(i, &i.checked_sub(1).map_or(vec![], |u| vec![u]))).collect();
        assert_eq!(columns(&chain)[49_999], 49_999);
        assert!(draw(&nodes, "g").is_some());
        let too_many: Vec<Node> = (0..=MAX_DRAWN).map(|i| node(i, &[])).collect();
        assert!(draw(&too_many, "g").is_none());
    }

    #[test]
    fn names_are_escaped_and_cut() {
        let mut n = node(0, &[]);
        n.name = "<script>alert(1)</script>-and-a-very-long-tail".into();
        let svg = draw(&[n], "g").unwrap().into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("…"), "{svg}");
    }
}
