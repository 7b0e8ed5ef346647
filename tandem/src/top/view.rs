//! `tandem top`'s interactive view: a header on the process and its dispatchers, the table
//! of VMs and VCPUs ([`super::table`]), the keys on the bottom line; refreshed every delay,
//! redrawn at once on a key.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line as TextLine;
use ratatui::widgets::{Cell, Paragraph, Row, Table as TableWidget, TableState};
use ratatui::{DefaultTerminal, Frame};
use tandem_core::live::{DispatcherRates, Interval, Snapshot};

use super::attach::{Sample, Source};
use super::table::{Action, Column, Line, Table};

/// The bottom line.
const KEYS: &str = "q quit  Up/Down/j/k select  e/Enter/space expand VM  E expand all  \
                    </> sort column  r reverse  U %RUN  R %RDY  N ID";

/// What a key asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Quit,
    Table(Action),
}

/// How the view ended.
enum Exit {
    Quit,
    Ended,
}

/// Shows `source` until `q`, or until its process ends; the terminal is restored on every
/// way out (ratatui's panic hook restores it on a panic).
pub fn run(source: &Source, every: Duration) -> anyhow::Result<()> {
    // Before the screen is taken: an error here prints as any other.
    let first = source.fetch()?;
    let mut terminal = ratatui::init();
    let exit = watch(&mut terminal, source, every, first);
    ratatui::restore();
    if let Exit::Ended = exit? {
        eprintln!("tandem top: process {} ended", source.pid);
    }
    Ok(())
}

/// The view's loop. The first screen shows the rates since the process started; the next
/// ones, those of the last delay.
fn watch(terminal: &mut DefaultTerminal, source: &Source, every: Duration, first: Snapshot) -> anyhow::Result<Exit> {
    let mut table = Table::default();
    let mut interval = Interval::between(None, &first);
    let mut before = first;
    let mut next_sample = Instant::now() + every;
    loop {
        let lines = table.lines(&interval);
        terminal.draw(|frame| draw(frame, &interval, every, &table, &lines))?;
        // A sample when due, even if keys keep coming; until then, keys.
        let until_sample = next_sample.saturating_duration_since(Instant::now());
        if !until_sample.is_zero() && event::poll(until_sample)? {
            if let Event::Key(key) = event::read()? {
                match command(key) {
                    Some(Command::Quit) => return Ok(Exit::Quit),
                    Some(Command::Table(action)) => table.apply(action, &lines),
                    None => {}
                }
            }
            continue;
        }
        match source.sample()? {
            Sample::Snapshot(now) => {
                interval = Interval::between(Some(&before), &now);
                before = now;
            }
            Sample::Ended => return Ok(Exit::Ended),
        }
        next_sample = Instant::now() + every;
    }
}

/// The keys: esxtop's where it has them (`e`, `E`, `<`, `>`, `r`, `U`, `R`, `N`, `q`).
fn command(key: KeyEvent) -> Option<Command> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    let action = match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Some(Command::Quit),
        KeyCode::Char('q') | KeyCode::Esc => return Some(Command::Quit),
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::Char('e' | ' ') | KeyCode::Enter => Action::Toggle,
        KeyCode::Char('E') => Action::ToggleAll,
        KeyCode::Char('<') => Action::SortLeft,
        KeyCode::Char('>') => Action::SortRight,
        KeyCode::Char('r') => Action::Reverse,
        KeyCode::Char('U') => Action::SortBy(Column::Run),
        KeyCode::Char('R') => Action::SortBy(Column::Ready),
        KeyCode::Char('N') => Action::SortBy(Column::Id),
        _ => return None,
    };
    Some(Command::Table(action))
}

fn draw(frame: &mut Frame, interval: &Interval, every: Duration, table: &Table, lines: &[Line]) {
    let header = header(interval, every);
    let [top, middle, bottom] =
        Layout::vertical([Constraint::Length(header.len() as u16 + 1), Constraint::Min(1), Constraint::Length(1)])
            .areas(frame.area());
    frame.render_widget(Paragraph::new(header), top);
    let mut state = TableState::default().with_selected(table.selected(lines));
    frame.render_stateful_widget(table_widget(table, lines), middle, &mut state);
    frame.render_widget(Paragraph::new(KEYS).style(Style::new().add_modifier(Modifier::REVERSED)), bottom);
}

/// The process, its uptime, and a line per dispatcher.
fn header(interval: &Interval, every: Duration) -> Vec<TextLine<'static>> {
    let up = interval.at_s as u64;
    let process = format!(
        "tandem top: pid {} ({}), up {}:{:02}:{:02}, every {:.1} s",
        interval.pid,
        interval.command,
        up / 3600,
        up / 60 % 60,
        up % 60,
        every.as_secs_f64()
    );
    std::iter::once(process).chain(interval.dispatchers.iter().map(dispatcher_line)).map(TextLine::from).collect()
}

fn dispatcher_line(dispatcher: &DispatcherRates) -> String {
    let micros = |mean: Option<f64>| mean.map_or_else(|| "-".to_owned(), |us| format!("{us:.1} µs"));
    format!(
        "dispatcher {}: {} on {} pCPUs, {:.0} decisions/s, mean decision {}, mean preemption {}",
        dispatcher.id,
        dispatcher.policy,
        dispatcher.pcpus,
        dispatcher.decisions_per_s,
        micros(dispatcher.decision_us),
        micros(dispatcher.preemption_us)
    )
}

/// The table with its titles, the sort column's underlined and marked `v` (largest first)
/// or `^`; figures right-aligned, as esxtop's.
fn table_widget<'a>(table: &Table, lines: &'a [Line]) -> TableWidget<'a> {
    let (sorted, largest_first) = table.sort();
    let titles = Column::ALL.map(|column| {
        if column == sorted {
            let mark = if largest_first { 'v' } else { '^' };
            let title = aligned(column, format!("{}{mark}", column.title()));
            Cell::from(title).style(Style::new().add_modifier(Modifier::UNDERLINED))
        } else {
            Cell::from(aligned(column, column.title().to_owned()))
        }
    });
    let widest_name = lines.iter().map(|line| line.cells[1].chars().count()).max().unwrap_or(0);
    let widths = Column::ALL.map(|column| {
        let width = if column == Column::Name { widest_name.max(6) } else { column.title().len().max(5) + 1 };
        Constraint::Length(width as u16)
    });
    let rows = lines
        .iter()
        .map(|line| Row::new(Column::ALL.iter().zip(&line.cells).map(|(column, cell)| aligned(*column, cell.clone()))));
    TableWidget::new(rows, widths)
        .header(Row::new(titles).style(Style::new().add_modifier(Modifier::BOLD)))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
}

/// A cell's text: figures right-aligned, names and states left.
fn aligned(column: Column, text: String) -> TextLine<'static> {
    match column {
        Column::Name | Column::State => TextLine::from(text),
        _ => TextLine::from(text).right_aligned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> Option<Command> {
        command(KeyEvent::new(code, modifiers))
    }

    #[test]
    fn keys_as_esxtop_has_them() {
        let none = KeyModifiers::NONE;
        assert_eq!(key(KeyCode::Char('q'), none), Some(Command::Quit));
        assert_eq!(key(KeyCode::Char('c'), KeyModifiers::CONTROL), Some(Command::Quit));
        assert_eq!(key(KeyCode::Char('c'), none), None);
        assert_eq!(key(KeyCode::Enter, none), Some(Command::Table(Action::Toggle)));
        assert_eq!(key(KeyCode::Char('E'), KeyModifiers::SHIFT), Some(Command::Table(Action::ToggleAll)));
        assert_eq!(key(KeyCode::Char('R'), KeyModifiers::SHIFT), Some(Command::Table(Action::SortBy(Column::Ready))));
    }

    #[test]
    fn the_header_shows_uptime_and_each_dispatcher() {
        let dispatcher = DispatcherRates {
            id: 1,
            policy: "credit".into(),
            pcpus: 2,
            decisions_per_s: 1234.4,
            decision_us: Some(1.25),
            preemption_us: None,
            preemptions_per_s: 0.0,
        };
        let interval = Interval {
            pid: 9,
            command: "compare".into(),
            at_s: 3725.5,
            seconds: 1.0,
            dispatchers: vec![dispatcher],
            vms: Vec::new(),
        };
        let text: Vec<String> = header(&interval, Duration::from_millis(500)).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "tandem top: pid 9 (compare), up 1:02:05, every 0.5 s",
                "dispatcher 1: credit on 2 pCPUs, 1234 decisions/s, mean decision 1.2 µs, mean preemption -",
            ]
        );
    }
}
