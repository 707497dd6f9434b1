//! Drawing the top view: a pure function of the model and the frame size. `to_text` renders
//! into an off-screen buffer, for golden tests and for the plain-text mode.

use ratatui::backend::TestBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Sparkline, Table, Wrap};
use ratatui::{Frame, Terminal};

use crate::analysis::detector::{LoopView, ViewState};
use crate::output::escape::escape;
use crate::sample::{short_path, thread_label};
use crate::top::model::{TopModel, ViewKind, SPARK_SECONDS};

const BLOCKED: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const TITLE: Style = Style::new().add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);

/// Text from the target, escaped: ratatui drops control characters, and the plain-text mode
/// prints this buffer too; escaped, a hostile name shows what it is.
fn esc(s: &str) -> String {
    escape(s).into_owned()
}

fn loc(l: &crate::episode::Location) -> String {
    format!("{}:{}", esc(short_path(&l.file)), l.line)
}

/// What a loop is doing now, as one styled line.
fn state_line(view: &LoopView, threshold_ms: f64) -> Span<'static> {
    match &view.state {
        ViewState::Idle => Span::raw("idle"),
        ViewState::Machinery => Span::raw("in the loop"),
        ViewState::Running {
            callback,
            secs,
            culprit,
            kind,
        } if *secs * 1000.0 >= threshold_ms => {
            let at = culprit
                .as_ref()
                .map(|c| format!("{} ({})", esc(&c.function), loc(c)))
                .unwrap_or_else(|| esc(callback));
            let kind = kind
                .as_deref()
                .map(|k| format!(" [{}]", esc(k)))
                .unwrap_or_default();
            Span::styled(format!("BLOCKED for {secs:.1} s in {at}{kind}"), BLOCKED)
        }
        ViewState::Running { callback, .. } => Span::raw(format!("running {}", esc(callback))),
    }
}

fn header(m: &TopModel, paused: bool) -> Paragraph<'static> {
    let st = &m.stats;
    let attempts = st.samples + st.errors;
    let errors = if attempts > 0 {
        100.0 * st.errors as f64 / attempts as f64
    } else {
        0.0
    };
    let mut first = vec![
        Span::styled(format!("loopspy top  pid {}", m.pid), TITLE),
        Span::raw(format!(
            "  Python {}  {}",
            esc(&m.python_version),
            esc(&m.command)
        )),
    ];
    if paused {
        first.push(Span::styled("  [paused]", BLOCKED));
    }
    // The clock that times the episodes; on the kernel clock ticks run only in long callbacks,
    // so fewer than asked is the design, not a late sampler.
    let sampling = match st.clock.as_str() {
        "kernel" => format!(
            "clock kernel, {:.0} Hz ({:.0} in long callbacks)",
            st.achieved_rate(),
            st.rate
        ),
        "" => format!("sampling {:.0} Hz of {:.0}", st.achieved_rate(), st.rate),
        clock => format!(
            "clock {}, {:.0} Hz of {:.0}",
            esc(clock),
            st.achieved_rate(),
            st.rate
        ),
    };
    let second = Line::from(format!(
        "{sampling}, {errors:.1}% errors, threshold {:.0} ms, {:.0} s",
        m.threshold_ms, m.now
    ));
    Paragraph::new(vec![Line::from(first), second])
}

fn worst_cell(ms: f64) -> Cell<'static> {
    Cell::from(if ms > 0.0 {
        format!("{ms:>6.0}")
    } else {
        "     -".into()
    })
}

fn loops_table(m: &TopModel) -> Table<'static> {
    let pids: std::collections::BTreeSet<u32> = m.loops.iter().map(|r| r.view.pid).collect();
    let multi = pids.len() > 1;
    let mut rows: Vec<Row> = m
        .loops
        .iter()
        .map(|r| {
            let v = &r.view;
            let who = esc(&thread_label(v.thread.as_deref(), v.tid));
            Row::new(vec![
                Cell::from(if multi {
                    format!("{} {who}", v.pid)
                } else {
                    who
                }),
                Cell::from(state_line(v, m.threshold_ms)),
                Cell::from(format!("{:>3.0}%", r.busy_share * 100.0)),
                Cell::from(format!("{:>4}", r.episodes_last_minute)),
                worst_cell(r.worst_ms),
                Cell::from(
                    v.ready_len
                        .map(|n| format!("{n:>5}"))
                        .unwrap_or_else(|| "    -".into()),
                ),
            ])
        })
        .collect();
    if multi {
        // Worker processes: one merged row over all of them.
        let n = m.loops.len().max(1) as f64;
        let blocked = m.loops.iter().filter(|r| {
            matches!(&r.view.state, ViewState::Running { secs, .. } if *secs * 1000.0 >= m.threshold_ms)
        });
        rows.push(
            Row::new(vec![
                Cell::from(format!("all {} processes", pids.len())),
                Cell::from(format!(
                    "{} loops, {} blocked now",
                    m.loops.len(),
                    blocked.count()
                )),
                Cell::from(format!(
                    "{:>3.0}%",
                    100.0 * m.loops.iter().map(|r| r.busy_share).sum::<f64>() / n
                )),
                Cell::from(format!(
                    "{:>4}",
                    m.loops
                        .iter()
                        .map(|r| r.episodes_last_minute)
                        .sum::<usize>()
                )),
                worst_cell(m.loops.iter().map(|r| r.worst_ms).fold(0.0, f64::max)),
                Cell::from(format!(
                    "{:>5}",
                    m.loops.iter().filter_map(|r| r.view.ready_len).sum::<u64>()
                )),
            ])
            .style(TITLE),
        );
    }
    let header =
        Row::new(vec!["loop thread", "now", "busy", "/min", "worst", "ready"]).style(TITLE);
    Table::new(
        rows,
        [
            Constraint::Length(if multi { 30 } else { 18 }),
            Constraint::Fill(1),
            Constraint::Length(4),
            Constraint::Length(4),
            Constraint::Length(6),
            Constraint::Length(5),
        ],
    )
    .header(header)
}

/// `file:line` in at most `width` columns: leading path components go first, never the line.
fn fit_loc(l: &crate::episode::Location, width: usize) -> String {
    let full = loc(l);
    if full.chars().count() <= width {
        return full;
    }
    let name = l.file.rsplit('/').next().unwrap_or(&l.file);
    let short = format!("{}:{}", esc(name), l.line);
    let n = short.chars().count();
    if n <= width {
        short
    } else {
        // Keep the end: the line number and as much of the name as fits.
        let tail: String = short.chars().skip(n - width.saturating_sub(1)).collect();
        format!("…{tail}")
    }
}

fn culprits_table(m: &TopModel, width: u16, height: u16) -> Table<'static> {
    // `where` and `kind/source` give way on narrow screens to the culprit and endpoint.
    let (where_w, kind_w) = if width < 100 { (16, 16) } else { (26, 22) };
    let rows: Vec<Row> = m
        .culprits()
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let row = Row::new(vec![
                Cell::from(esc(&c.culprit.function)),
                Cell::from(fit_loc(&c.culprit, where_w as usize)),
                Cell::from(esc(&c.why)),
                Cell::from(esc(&c.endpoint_label())),
                Cell::from(format!("{:>5}", c.count)),
                Cell::from(format!("{:>8.0}", c.total_ms)),
                Cell::from(format!("{:>6.0}", c.worst_ms)),
            ]);
            if i == m.selected {
                row.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    // Keep the selected row on screen.
    let visible = height.saturating_sub(2) as usize;
    let skip = m.selected.saturating_sub(visible.saturating_sub(1));
    let header = Row::new(vec![
        "culprit",
        "where",
        "kind/source",
        "endpoint",
        "count",
        "total ms",
        "worst",
    ])
    .style(TITLE);
    Table::new(
        rows.into_iter().skip(skip),
        [
            Constraint::Fill(2),
            Constraint::Max(where_w),
            Constraint::Max(kind_w),
            Constraint::Fill(2),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(6),
        ],
    )
    .header(header)
}

fn detail(m: &TopModel) -> Paragraph<'static> {
    let culprits = m.culprits();
    let Some(c) = culprits.get(m.selected) else {
        let msg = if m.ended.is_some() {
            "no blocking episodes were seen"
        } else {
            "no blocking episodes yet"
        };
        return Paragraph::new(Line::styled(msg, DIM));
    };
    let mut lines = vec![];
    if let Some(a) = &c.advice {
        lines.push(Line::from(vec![
            Span::styled("fix: ", TITLE),
            Span::raw(esc(a)),
        ]));
    }
    // From the user's own frame outwards, so it stays visible however deep the library call
    // under it goes; the frames under it are summed up in one line.
    let at = c.stack.iter().position(|f| *f == c.culprit).unwrap_or(0);
    lines.push(Line::styled(
        format!("→ {} ({})", esc(&c.culprit.function), loc(&c.culprit)),
        TITLE,
    ));
    if at > 0 {
        let inner = &c.stack[0];
        lines.push(Line::styled(
            format!(
                "    calls {at} library frame{} down to {} ({})",
                if at == 1 { "" } else { "s" },
                esc(&inner.function),
                loc(inner)
            ),
            DIM,
        ));
    }
    for f in c
        .stack
        .iter()
        .skip(at + 1)
        .filter(|f| !f.file.contains("/asyncio/"))
        .take(5)
    {
        lines.push(Line::from(format!("  {} ({})", f.function, loc(f))));
    }
    Paragraph::new(lines).wrap(Wrap { trim: false })
}

fn recent(m: &TopModel) -> Paragraph<'static> {
    let lines: Vec<Line> = m
        .recent
        .iter()
        .map(|e| {
            Line::from(format!(
                "{:>7.0} ms  {} ({})  {}  on {}{}",
                e.duration_ms,
                esc(&e.culprit.function),
                loc(&e.culprit),
                esc(&match &e.source {
                    Some(s) => format!("{}/{s}", e.kind),
                    None => e.kind.clone(),
                }),
                esc(&thread_label(e.thread.as_deref(), e.tid)),
                e.endpoint()
                    .map(|p| format!("  {}", esc(&p)))
                    .unwrap_or_default()
            ))
        })
        .collect();
    Paragraph::new(lines)
}

fn footer(m: &TopModel) -> Line<'static> {
    match (&m.ended, m.view) {
        (Some(why), ViewKind::FullScreen) => Line::styled(
            format!(
                "sampling ended: {}. The last state stays on screen; q quits.",
                esc(why)
            ),
            BLOCKED,
        ),
        (Some(why), ViewKind::Plain { .. }) => {
            Line::styled(format!("sampling ended: {}.", esc(why)), BLOCKED)
        }
        // Plain snapshots read no keys but `q` (then Enter) from a terminal on stdin.
        (None, ViewKind::Plain { reads_q: true }) => {
            Line::styled("q then Enter, or Ctrl-C, quits", DIM)
        }
        (None, ViewKind::Plain { reads_q: false }) => Line::styled("Ctrl-C quits", DIM),
        (None, ViewKind::FullScreen) => Line::styled(
            format!(
                "q quit  p pause  s sort ({})  ↑↓ select  ? help",
                m.sort.label()
            ),
            DIM,
        ),
    }
}

fn help() -> Paragraph<'static> {
    Paragraph::new(vec![
        Line::styled("keys", TITLE),
        Line::from("  q, Ctrl-C   quit (the terminal is restored)"),
        Line::from("  p           pause the display; sampling goes on"),
        Line::from("  s           sort culprits: total time, count, worst, most recent"),
        Line::from("  ↑ ↓         select a culprit: its stack and fix show below"),
        Line::from("  ?           this help"),
        Line::from(""),
        Line::from("A loop is BLOCKED when one callback has run longer than the threshold."),
        Line::from(
            "busy: share of the last 10 s spent in callbacks; /min: episodes in the last minute.",
        ),
        Line::from(
            "blocked ms/s: time each loop spent blocked, per second over the last minute (a full bar: the whole second).",
        ),
        Line::from(
            "endpoint: the HTTP route the culprit blocked most (+N others), read from the blocked task (--no-request: none).",
        ),
    ])
}

/// Draw the whole view.
pub fn draw(f: &mut Frame, m: &TopModel, paused: bool) {
    let area = f.area();
    if m.help {
        f.render_widget(help(), area);
        return;
    }
    let pids = m
        .loops
        .iter()
        .map(|r| r.view.pid)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let rows = m.loops.len().max(1) + usize::from(pids > 1);
    let loops_h = (rows as u16 + 1).min(area.height / 4 + 1);
    let [head, _, loops, _, culprits, detail_area, recent_area, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Length(loops_h),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(5),
        Constraint::Length(recent_height(area)),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(header(m, paused), head);
    if m.loops.is_empty() {
        f.render_widget(
            Paragraph::new(Line::styled("no asyncio event loop seen yet", DIM)),
            loops,
        );
    } else {
        let width = spark_width(area.width);
        let [table, _, sparks] = Layout::horizontal([
            Constraint::Fill(1),
            Constraint::Length(1),
            Constraint::Length(width),
        ])
        .areas(loops);
        f.render_widget(loops_table(m), table);
        draw_sparklines(f, m, sparks);
    }
    f.render_widget(culprits_table(m, culprits.width, culprits.height), culprits);
    f.render_widget(detail(m), detail_area);
    f.render_widget(section("recent episodes", recent(m)), recent_area);
    f.render_widget(footer(m), foot);
}

/// Columns of the sparkline: a divisor of `SPARK_SECONDS`, one second per column when there
/// is room (160 columns), two at 120, four at 80.
fn spark_width(screen: u16) -> u16 {
    let room = screen.saturating_sub(100);
    [60u16, 30, 20, 15]
        .into_iter()
        .find(|w| *w <= room)
        .unwrap_or(15)
}

/// Each loop row's blocked time per second over the last minute, right of its row: one bar per
/// `SPARK_SECONDS / width` seconds (the worst of them), full height at a whole second blocked.
fn draw_sparklines(f: &mut Frame, m: &TopModel, area: Rect) {
    let per_bar = (SPARK_SECONDS / area.width.max(1) as usize).max(1);
    let head = Rect { height: 1, ..area };
    f.render_widget(
        Paragraph::new(Line::styled(
            if area.width >= 20 {
                format!("blocked/s, last {SPARK_SECONDS} s")
            } else {
                format!("blocked, {SPARK_SECONDS} s")
            },
            TITLE,
        )),
        head,
    );
    for (i, r) in m.loops.iter().enumerate() {
        let y = area.y + 1 + i as u16;
        if y >= area.y + area.height {
            break;
        }
        let bars: Vec<u64> = r
            .blocked_per_second
            .chunks(per_bar)
            .map(|c| c.iter().copied().max().unwrap_or(0))
            .collect();
        let row = Rect {
            y,
            height: 1,
            ..area
        };
        f.render_widget(
            Sparkline::default()
                .data(&bars)
                .max(1000)
                .style(Style::new().fg(Color::Red)),
            row,
        );
    }
}

fn recent_height(area: Rect) -> u16 {
    if area.height >= 36 {
        8
    } else {
        4
    }
}

fn section(title: &'static str, body: Paragraph<'static>) -> Paragraph<'static> {
    body.block(ratatui::widgets::Block::new().title(Line::styled(title, TITLE)))
}

/// Render into an off-screen buffer of `width`×`height` and return its text, one line per row
/// with trailing spaces trimmed.
pub fn to_text(m: &TopModel, width: u16, height: u16, paused: bool) -> String {
    let mut term = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(_) => return String::new(),
    };
    if term.draw(|f| draw(f, m, paused)).is_err() {
        return String::new();
    }
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
