//! `omctl mon`: a live terminal view of the cluster, the successor of
//! openMosix's mosmon. Nodes with load, speed, memory and guests as bars,
//! this node's processes and where they run, and migrations as they happen.
//! Fits an 80x24 terminal; q, Esc or Ctrl-C quits.

use crate::client::Client;
use crate::wire::{NodeInfo, ProcEvent, ProcInfo};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the view shows.
#[derive(Default, Debug, Clone)]
pub struct View {
    pub nodes: Vec<NodeInfo>,
    pub procs: Vec<ProcInfo>,
    /// Newest first: (clock, what happened).
    pub moves: VecDeque<(String, String)>,
    pub error: Option<String>,
    pub clock: String,
    /// omd's event stream is read: moves come from it, not from readings.
    pub events_live: bool,
}

impl View {
    /// Take a new reading; a process whose node changed is a migration.
    pub fn update(&mut self, nodes: Vec<NodeInfo>, procs: Vec<ProcInfo>, clock: String) {
        let before: HashMap<i32, u32> = self.procs.iter().map(|p| (p.pid, p.where_)).collect();
        let me = nodes.first().map_or(0, |n| n.id);
        for p in procs.iter().filter(|_| !self.events_live) {
            if let Some(&w) = before.get(&p.pid) {
                if w != p.where_ {
                    let what = if p.where_ == me {
                        "came home".to_string()
                    } else {
                        format!("node {w} → node {}", p.where_)
                    };
                    self.moves.push_front((clock.clone(), format!("process {}  {what}", p.pid)));
                }
            }
        }
        self.moves.truncate(50);
        self.nodes = nodes;
        self.procs = procs;
        self.clock = clock;
        self.error = None;
    }
}

impl View {
    /// One event from omd's stream.
    pub fn event(&mut self, e: &ProcEvent, clock: String) {
        let what = match e.kind.as_str() {
            "moved" => format!("node {} → node {}", e.from, e.to),
            "home" => "came home".to_string(),
            "refused" => format!("not moved to {}: {}", e.to, e.reason),
            "exited" if e.signal != 0 => format!("killed by signal {}", e.signal),
            "exited" => format!("exited with status {}", e.code),
            k => k.to_string(),
        };
        self.moves.push_front((clock, format!("process {}  {what}", e.pid)));
        self.moves.truncate(50);
    }
}

fn bar(frac: f64, width: usize) -> String {
    let f = if frac.is_finite() { frac.clamp(0.0, 1.0) } else { 0.0 };
    let full = (f * width as f64).round() as usize;
    "█".repeat(full) + &"░".repeat(width - full.min(width))
}

fn load_color(load: f64) -> Color {
    if load >= 1.5 {
        Color::Red
    } else if load >= 0.9 {
        Color::Yellow
    } else {
        Color::Green
    }
}

/// Draw the whole view.
pub fn draw(f: &mut Frame, v: &View) {
    let area = f.area();
    let node_rows = (v.nodes.len() as u16).clamp(1, 8) + 3;
    let [top, nodes, procs, moves] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(node_rows),
        Constraint::Min(5),
        Constraint::Length(6),
    ])
    .areas(area);
    let me = v.nodes.first().map_or(0, |n| n.id);
    let title = match &v.error {
        Some(e) => Line::styled(format!(" om mon  node {me}  {}  {e}", v.clock), Style::new().fg(Color::Red)),
        None => Line::styled(
            format!(" om mon  node {me}  {}  {} nodes  {} processes   q quits", v.clock, v.nodes.len(), v.procs.len()),
            Style::new().add_modifier(Modifier::BOLD),
        ),
    };
    f.render_widget(Paragraph::new(title), top);

    let rows = v.nodes.iter().map(|n| {
        let mem = if n.mem_total > 0 { 1.0 - n.mem_free as f64 / n.mem_total as f64 } else { 0.0 };
        let guests = if n.accepts { format!("{}/{}", n.guests, n.max_guests) } else { format!("{} blk", n.guests) };
        let style = if n.state == "alive" { Style::new() } else { Style::new().fg(Color::DarkGray) };
        Row::new(vec![
            Cell::from(n.id.to_string()),
            Cell::from(n.state.clone()),
            Cell::from(bar(n.load / 2.0, 12)).style(Style::new().fg(load_color(n.load))),
            Cell::from(format!("{:.2}", n.load)),
            Cell::from(format!("{:.2}", n.speed)),
            Cell::from(bar(mem, 8)).style(Style::new().fg(Color::Cyan)),
            Cell::from(format!("{:>3.0}%", mem * 100.0)),
            Cell::from(guests),
        ])
        .style(style)
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(4),
            Constraint::Min(6),
        ],
    )
    .header(Row::new(NODE_LABELS.to_vec()))
    .block(Block::new().borders(Borders::TOP).title(" nodes (the load bar is full at 2) "));
    f.render_widget(t, nodes);

    let rows = v.procs.iter().map(|p| {
        let why = if p.cant_move.is_empty() || p.locked { &p.why } else { &p.cant_move };
        let here = if p.where_ == p.home { Style::new() } else { Style::new().fg(Color::Green) };
        Row::new(vec![
            Cell::from(p.pid.to_string()),
            Cell::from(format!("{}→{}", p.home, p.where_)).style(here),
            Cell::from(format!("{:>3.0}%", p.demand * 100.0)),
            Cell::from(format!("{}M", p.rss >> 20)),
            Cell::from(p.cmd.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>()),
            Cell::from(why.clone()),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Length(6),
            Constraint::Length(20),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(PROC_LABELS.to_vec()))
    .block(Block::new().borders(Borders::TOP).title(" processes (home → where) "));
    f.render_widget(t, procs);

    let lines: Vec<Line> = v.moves.iter().take(5).map(|(c, what)| Line::from(format!(" {c}  {what}"))).collect();
    let p = Paragraph::new(lines).block(Block::new().borders(Borders::TOP).title(" migrations "));
    f.render_widget(p, moves);
}

/// The tables' column labels: each fits its column at 80 columns.
const NODE_LABELS: [&str; 8] = ["NODE", "STATE", "LOAD", "", "SPEED", "MEMORY", "", "GUESTS"];
const PROC_LABELS: [&str; 6] = ["PID", "WHERE", "CPU", "RSS", "COMMAND", "WHY IT STAYS"];

fn clock() -> String {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02} UTC", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn read(path: &Path, client: &mut Option<Client>) -> Result<(Vec<NodeInfo>, Vec<ProcInfo>), String> {
    if client.is_none() {
        *client = Some(Client::connect(path).map_err(|e| e.to_string())?);
    }
    let c = client.as_mut().ok_or("no connection")?;
    let r = c.nodes().and_then(|n| c.ps().map(|p| (n, p))).map_err(|e| e.to_string());
    if r.is_err() {
        *client = None;
    }
    r
}

/// Run the view until q, Esc or Ctrl-C.
pub fn run(path: &Path, interval: f64) -> std::io::Result<()> {
    let interval = Duration::from_secs_f64(if interval.is_finite() { interval.clamp(0.1, 60.0) } else { 1.0 });
    let mut client = None;
    // Fail before taking over the terminal when no omd answers.
    let first = read(path, &mut client).map_err(std::io::Error::other)?;
    let mut v = View::default();
    v.update(first.0, first.1, clock());
    // omd's events, read by a thread of their own.
    let (tx, events) = std::sync::mpsc::channel::<ProcEvent>();
    if let Ok(stream) = Client::connect(path).and_then(|c| c.events()) {
        v.events_live = true;
        std::thread::spawn(move || {
            for e in stream.map_while(Result::ok) {
                if tx.send(e).is_err() {
                    return;
                }
            }
        });
    }
    let mut term = ratatui::init();
    let r = (|| -> std::io::Result<()> {
        let mut last = Instant::now();
        loop {
            term.draw(|f| draw(f, &v))?;
            let wait = interval.saturating_sub(last.elapsed());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if k.kind == KeyEventKind::Press && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
                    {
                        return Ok(());
                    }
                }
            }
            while let Ok(e) = events.try_recv() {
                v.event(&e, clock());
            }
            if last.elapsed() >= interval {
                last = Instant::now();
                match read(path, &mut client) {
                    Ok((n, p)) => v.update(n, p, clock()),
                    Err(e) => v.error = Some(format!("omd: {e}")),
                }
            }
        }
    })();
    ratatui::restore();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn node(id: u32, load: f64) -> NodeInfo {
        NodeInfo {
            id,
            addr: format!("10.0.0.{id}:7700"),
            state: "alive".into(),
            load,
            cpus: 1,
            speed: 1.0,
            mem_total: 8 << 30,
            mem_free: 6 << 30,
            guests: 1,
            max_guests: 16,
            accepts: true,
            age_ms: 100,
        }
    }

    fn proc_(pid: i32, where_: u32) -> ProcInfo {
        ProcInfo {
            gang: Vec::new(),
            pid,
            home: 1,
            where_,
            state: if where_ == 1 { "home" } else { "away" }.into(),
            cmd: "python3 -c loop".into(),
            cant_move: String::new(),
            why: "balanced: no node is better".into(),
            demand: 1.0,
            rss: 12 << 20,
            locked: false,
        }
    }

    #[test]
    fn events_from_omd_show_as_they_come() {
        let mut v = View { events_live: true, ..View::default() };
        v.update(vec![node(1, 1.0)], vec![proc_(100, 1)], "10:00:00 UTC".into());
        let e = |kind: &str| ProcEvent {
            pid: 100,
            kind: kind.into(),
            from: 1,
            to: 2,
            reason: "it has shared memory".into(),
            code: 3,
            signal: 0,
        };
        for k in ["moved", "refused", "exited"] {
            v.event(&e(k), "10:00:01 UTC".into());
        }
        // Readings no longer make moves up once the stream is read.
        v.update(vec![node(1, 1.0)], vec![proc_(100, 2)], "10:00:02 UTC".into());
        let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        t.draw(|f| draw(f, &v)).expect("draw");
        let buf = t.backend().buffer().clone();
        let text: String =
            (0..24).map(|y| (0..80).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>() + "\n").collect();
        assert!(text.contains("process 100  node 1 → node 2"), "{text}");
        assert!(text.contains("process 100  not moved to 2: it has shared memory"), "{text}");
        assert!(text.contains("process 100  exited with status 3"), "{text}");
        assert_eq!(v.moves.len(), 3, "{:?}", v.moves);
    }

    #[test]
    fn fits_80x24_and_shows_nodes_processes_and_moves() {
        let mut v = View::default();
        v.update(vec![node(1, 2.0), node(2, 0.5)], vec![proc_(100, 1), proc_(101, 1)], "10:00:00 UTC".into());
        v.update(vec![node(1, 1.0), node(2, 1.0)], vec![proc_(100, 1), proc_(101, 2)], "10:00:01 UTC".into());
        let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        t.draw(|f| draw(f, &v)).expect("draw");
        let buf = t.backend().buffer().clone();
        let text: String =
            (0..24).map(|y| (0..80).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>() + "\n").collect();
        assert!(text.contains("om mon  node 1"), "{text}");
        assert!(text.contains("alive") && text.contains("1/16"), "{text}");
        assert!(text.contains("101") && text.contains("1→2"), "{text}");
        assert!(text.contains("process 101  node 1 → node 2"), "{text}");
        // Every label whole at 80 columns.
        for label in NODE_LABELS.iter().chain(&PROC_LABELS) {
            assert!(text.contains(label), "{label} cut off:\n{text}");
        }
    }
}
