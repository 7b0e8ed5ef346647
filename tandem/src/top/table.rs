//! The interactive view's table without a terminal: its columns (esxtop's), which lines it
//! shows (one per VM, its VCPUs added up as esxtop's group lines, and one per VCPU under a
//! VM expanded), in which order, which is selected, and how keys change that.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use tandem_core::live::{Interval, VcpuRates, VmRates};

/// The table's columns, with esxtop's names where it has the figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Id,
    Name,
    Nvcpu,
    State,
    Run,
    Ready,
    Costop,
    Wait,
    Exits,
    Blocks,
    Kicks,
    LockSlow,
    Grant,
    Demand,
}

impl Column {
    /// The columns, left to right.
    pub const ALL: [Column; 14] = [
        Column::Id,
        Column::Name,
        Column::Nvcpu,
        Column::State,
        Column::Run,
        Column::Ready,
        Column::Costop,
        Column::Wait,
        Column::Exits,
        Column::Blocks,
        Column::Kicks,
        Column::LockSlow,
        Column::Grant,
        Column::Demand,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Id => "ID",
            Column::Name => "NAME",
            Column::Nvcpu => "NVCPU",
            Column::State => "STATE",
            Column::Run => "%RUN",
            Column::Ready => "%RDY",
            Column::Costop => "%CSTP",
            Column::Wait => "%WAIT",
            Column::Exits => "EXIT/s",
            Column::Blocks => "BLK/s",
            Column::Kicks => "KICK/s",
            Column::LockSlow => "LKSLOW/s",
            Column::Grant => "GRANT",
            Column::Demand => "DEMAND",
        }
    }

    /// Whether sorting by it puts the largest first, as esxtop does with its figures; ids,
    /// names and states (busiest first) go in ascending order.
    fn largest_first(self) -> bool {
        !matches!(self, Column::Id | Column::Name | Column::State)
    }

    /// The next column to the left (`step` -1) or right (+1), stopping at the edges.
    fn beside(self, step: isize) -> Column {
        let at = Column::ALL.iter().position(|column| *column == self).expect("every column is in ALL");
        Column::ALL[at.saturating_add_signed(step).min(Column::ALL.len() - 1)]
    }
}

/// A line of the table: a VM's (`vcpu` None) or one of its VCPUs'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineKey {
    pub vm: u64,
    pub vcpu: Option<u32>,
}

/// A line as shown: its key and a cell per column of [`Column::ALL`].
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub key: LineKey,
    pub cells: Vec<String>,
}

/// What a key asks of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    /// Expand the selected VM into its VCPUs, or collapse it.
    Toggle,
    /// Expand every VM, or collapse them all if all are expanded.
    ToggleAll,
    SortLeft,
    SortRight,
    SortBy(Column),
    Reverse,
}

/// How the table is sorted, expanded and selected: all that outlives a refresh.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    sort: Column,
    reversed: bool,
    expanded: BTreeSet<u64>,
    selected: Option<LineKey>,
}

impl Default for Table {
    /// Sorted by %RUN, the busiest first, as esxtop sorts by %USED; nothing expanded.
    fn default() -> Table {
        Table { sort: Column::Run, reversed: false, expanded: BTreeSet::new(), selected: None }
    }
}

impl Table {
    /// The column the table is sorted by, and whether the largest come first.
    pub fn sort(&self) -> (Column, bool) {
        (self.sort, self.sort.largest_first() != self.reversed)
    }

    /// The lines to show for `interval`: each VM's, sorted, each followed by its VCPUs' (in
    /// order) if it is expanded.
    pub fn lines(&self, interval: &Interval) -> Vec<Line> {
        let mut vms: Vec<(&VmRates, VcpuRates)> = interval.vms.iter().map(|vm| (vm, vm.total())).collect();
        vms.sort_by(|a, b| {
            let order = compare(self.sort, a, b);
            let order = if self.sort().1 { order.reverse() } else { order };
            order.then(a.0.id.cmp(&b.0.id))
        });
        let mut lines = Vec::new();
        for (vm, total) in vms {
            lines.push(Line { key: LineKey { vm: vm.id, vcpu: None }, cells: vm_cells(vm, &total) });
            if self.expanded.contains(&vm.id) {
                let vcpus = vm
                    .vcpus
                    .iter()
                    .map(|vcpu| Line { key: LineKey { vm: vm.id, vcpu: Some(vcpu.id) }, cells: vcpu_cells(vcpu) });
                lines.extend(vcpus);
            }
        }
        lines
    }

    /// The selected line's index in `lines`: the line selected if it is there, else its VM's
    /// (collapsed since), else the first; none if there are no lines.
    pub fn selected(&self, lines: &[Line]) -> Option<usize> {
        let find = |key: LineKey| lines.iter().position(|line| line.key == key);
        let selected = self.selected.and_then(|key| find(key).or_else(|| find(LineKey { vcpu: None, ..key })));
        selected.or((!lines.is_empty()).then_some(0))
    }

    /// Does what `action` asks, on the `lines` shown.
    pub fn apply(&mut self, action: Action, lines: &[Line]) {
        let Some(at) = self.selected(lines) else { return };
        match action {
            Action::Up => self.selected = Some(lines[at.saturating_sub(1)].key),
            Action::Down => self.selected = Some(lines[(at + 1).min(lines.len() - 1)].key),
            Action::Toggle => {
                let vm = lines[at].key.vm;
                if !self.expanded.remove(&vm) {
                    self.expanded.insert(vm);
                }
                self.selected = Some(LineKey { vm, vcpu: None });
            }
            Action::ToggleAll => {
                let vms: BTreeSet<u64> = lines.iter().map(|line| line.key.vm).collect();
                self.expanded = if vms.is_subset(&self.expanded) { BTreeSet::new() } else { vms };
            }
            Action::SortLeft => self.sort_by(self.sort.beside(-1)),
            Action::SortRight => self.sort_by(self.sort.beside(1)),
            Action::SortBy(column) => self.sort_by(column),
            Action::Reverse => self.reversed = !self.reversed,
        }
    }

    fn sort_by(&mut self, column: Column) {
        self.sort = column;
        self.reversed = false;
    }
}

/// Two VMs (and their lines' figures) in `column`'s ascending order.
fn compare(column: Column, (a, a_total): &(&VmRates, VcpuRates), (b, b_total): &(&VmRates, VcpuRates)) -> Ordering {
    let figure = |vm: &VmRates, total: &VcpuRates| match column {
        Column::Id | Column::Name => vm.id as f64,
        Column::Nvcpu => vm.vcpus.len() as f64,
        Column::State => f64::from(total.state as u8),
        Column::Grant => vm.grant.map_or(-1.0, f64::from),
        Column::Demand => f64::from(vm.demand),
        figure => rate(figure, total).expect("the other columns are rates"),
    };
    match column {
        Column::Name => a.name.cmp(&b.name),
        _ => figure(a, a_total).total_cmp(&figure(b, b_total)),
    }
}

/// A VCPU's (or a VM line's) figure in a column of shares and rates.
fn rate(column: Column, rates: &VcpuRates) -> Option<f64> {
    Some(match column {
        Column::Run => rates.run,
        Column::Ready => rates.ready,
        Column::Costop => rates.costop,
        Column::Wait => rates.wait,
        Column::Exits => rates.exits_per_s,
        Column::Blocks => rates.blocks_per_s,
        Column::Kicks => rates.kicks_per_s,
        Column::LockSlow => rates.lock_slow_per_s,
        _ => return None,
    })
}

/// The shares with one decimal, as esxtop; the rates without.
fn rate_cell(column: Column, rates: &VcpuRates) -> Option<String> {
    let figure = rate(column, rates)?;
    Some(if column.title().starts_with('%') { format!("{figure:.1}") } else { format!("{figure:.0}") })
}

fn vm_cells(vm: &VmRates, total: &VcpuRates) -> Vec<String> {
    let cell = |column: Column| match column {
        Column::Id => vm.id.to_string(),
        Column::Name => vm.name.clone(),
        Column::Nvcpu => vm.vcpus.len().to_string(),
        Column::State => total.state.to_string(),
        Column::Grant => vm.grant.map(|grant| grant.to_string()).unwrap_or_default(),
        Column::Demand => vm.demand.to_string(),
        rates => rate_cell(rates, total).expect("the other columns are rates"),
    };
    Column::ALL.map(cell).into()
}

/// A VCPU's line: its index as its id, named after it (indented under its VM's name).
fn vcpu_cells(vcpu: &VcpuRates) -> Vec<String> {
    let cell = |column: Column| match column {
        Column::Id => vcpu.id.to_string(),
        Column::Name => format!("  vcpu{}", vcpu.id),
        Column::State => vcpu.state.to_string(),
        Column::Nvcpu | Column::Grant | Column::Demand => String::new(),
        rates => rate_cell(rates, vcpu).expect("the other columns are rates"),
    };
    Column::ALL.map(cell).into()
}

#[cfg(test)]
mod tests {
    use tandem_core::live::VcpuState;

    use super::*;

    fn vcpu(id: u32, state: VcpuState, run: f64) -> VcpuRates {
        VcpuRates {
            id,
            state,
            run,
            ready: 100.0 - run,
            costop: 0.0,
            wait: 0.0,
            offline: 0.0,
            exits_per_s: 10.0 * run,
            blocks_per_s: 0.0,
            kicks_per_s: 0.0,
            lock_slow_per_s: 0.0,
        }
    }

    fn vm(id: u64, name: &str, runs: &[f64]) -> VmRates {
        let vcpus = runs.iter().enumerate().map(|(at, run)| vcpu(at as u32, VcpuState::Run, *run)).collect();
        VmRates { id, name: name.into(), policy: "credit".into(), grant: None, demand: 1, vcpus }
    }

    /// db runs most (120 %), web has the most VCPUs and %RDY, batch the least %RUN.
    fn interval() -> Interval {
        Interval {
            pid: 7,
            command: "scenario".into(),
            at_s: 2.0,
            seconds: 1.0,
            dispatchers: Vec::new(),
            vms: vec![vm(1, "web", &[30.0, 30.0, 30.0]), vm(2, "db", &[60.0, 60.0]), vm(3, "batch", &[10.0])],
        }
    }

    fn names(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|line| line.cells[1].as_str()).collect()
    }

    #[test]
    fn vm_lines_add_their_vcpus_up_and_sort_by_run_busiest_first() {
        let table = Table::default();
        let lines = table.lines(&interval());
        assert_eq!(names(&lines), ["db", "web", "batch"]);
        assert_eq!(table.sort(), (Column::Run, true));
        let titles: Vec<&str> = Column::ALL.iter().map(|column| column.title()).collect();
        assert_eq!(
            titles.join(" "),
            "ID NAME NVCPU STATE %RUN %RDY %CSTP %WAIT EXIT/s BLK/s KICK/s LKSLOW/s GRANT DEMAND"
        );
        assert_eq!(
            lines[0].cells,
            ["2", "db", "2", "RUN", "120.0", "80.0", "0.0", "0.0", "1200", "0", "0", "0", "", "1"]
        );
    }

    #[test]
    fn sorting_moves_between_columns_reverses_and_stops_at_the_edges() {
        let mut table = Table::default();
        let lines = table.lines(&interval());
        table.apply(Action::SortLeft, &lines);
        assert_eq!(table.sort(), (Column::State, false));
        table.apply(Action::SortLeft, &lines);
        table.apply(Action::SortLeft, &lines);
        assert_eq!(table.sort(), (Column::Name, false));
        assert_eq!(names(&table.lines(&interval())), ["batch", "db", "web"]);
        table.apply(Action::Reverse, &lines);
        assert_eq!(names(&table.lines(&interval())), ["web", "db", "batch"]);
        table.apply(Action::SortLeft, &lines);
        table.apply(Action::SortLeft, &lines);
        assert_eq!(table.sort(), (Column::Id, false), "the left edge, and a new column is not reversed");
        table.apply(Action::SortBy(Column::Ready), &lines);
        assert_eq!(names(&table.lines(&interval())), ["web", "batch", "db"]);
        table.apply(Action::SortBy(Column::Nvcpu), &lines);
        table.apply(Action::SortRight, &lines);
        table.apply(Action::SortRight, &lines);
        assert_eq!(table.sort(), (Column::Run, true));
        for _ in 0..20 {
            table.apply(Action::SortRight, &lines);
        }
        assert_eq!(table.sort(), (Column::Demand, true), "the right edge");
    }

    #[test]
    fn expanding_shows_a_vm_s_vcpus_under_it_and_the_selection_follows() {
        let mut table = Table::default();
        let lines = table.lines(&interval());
        assert_eq!(table.selected(&lines), Some(0));
        table.apply(Action::Down, &lines);
        table.apply(Action::Toggle, &lines);
        let lines = table.lines(&interval());
        assert_eq!(names(&lines), ["db", "web", "  vcpu0", "  vcpu1", "  vcpu2", "batch"]);
        assert_eq!(lines[3].key, LineKey { vm: 1, vcpu: Some(1) });
        assert_eq!(lines[3].cells[..5], ["1", "  vcpu1", "", "RUN", "30.0"]);
        assert_eq!(table.selected(&lines), Some(1));
        table.apply(Action::Down, &lines);
        table.apply(Action::Down, &lines);
        assert_eq!(table.selected(&lines), Some(3));
        // Toggling on a VCPU's line collapses its VM, and the VM's line is selected.
        table.apply(Action::Toggle, &lines);
        let lines = table.lines(&interval());
        assert_eq!(names(&lines), ["db", "web", "batch"]);
        assert_eq!(table.selected(&lines), Some(1));
        table.apply(Action::Down, &lines);
        table.apply(Action::Down, &lines);
        assert_eq!(table.selected(&lines), Some(2), "the last line stays selected");
        table.apply(Action::Up, &lines);
        table.apply(Action::Up, &lines);
        table.apply(Action::Up, &lines);
        assert_eq!(table.selected(&lines), Some(0), "the first line stays selected");
    }

    #[test]
    fn expand_all_then_collapse_all() {
        let mut table = Table::default();
        let lines = table.lines(&interval());
        table.apply(Action::Toggle, &lines);
        table.apply(Action::ToggleAll, &lines);
        assert_eq!(table.lines(&interval()).len(), 3 + 6);
        table.apply(Action::ToggleAll, &lines);
        assert_eq!(table.lines(&interval()).len(), 3);
    }

    #[test]
    fn a_selected_vm_that_went_away_gives_way_to_the_first_line_and_an_empty_table_to_none() {
        let mut table = Table::default();
        let lines = table.lines(&interval());
        table.apply(Action::Down, &lines);
        let mut fewer = interval();
        fewer.vms.retain(|vm| vm.name != "web");
        assert_eq!(table.selected(&table.lines(&fewer)), Some(0));
        fewer.vms.clear();
        assert_eq!(table.selected(&table.lines(&fewer)), None);
        table.apply(Action::Toggle, &[]);
    }
}
