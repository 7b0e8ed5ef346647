//! `tandem sweep`'s report: the grid's points as CSV and one SVG of line plots per pCPU
//! count.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use tandem_core::experiment::{SweepGrid, SweepResult};

/// The points as CSV, a row each.
pub fn write_csv(path: &Path, points: &[SweepResult]) -> anyhow::Result<()> {
    let mut text = String::from(
        "pcpus,overcommit,mix,locks,policy,vms,vcpus,mean_ratio,min_ratio,fairness,utilization,events,wall_s\n",
    );
    for p in points {
        let _ = writeln!(
            text,
            "{},{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{:.3}",
            p.pcpus,
            p.overcommit,
            p.mix,
            p.locks,
            p.policy,
            p.vms,
            p.vcpus,
            p.mean_ratio,
            p.min_ratio,
            p.fairness,
            p.utilization,
            p.events,
            p.wall_s
        );
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// One SVG for `pcpus`: a panel per mix and lock family, mean result / ideal against
/// overcommit, a line per policy.
pub fn plot(path: &Path, pcpus: u32, grid: &SweepGrid, points: &[SweepResult]) -> anyhow::Result<()> {
    let (rows, cols) = (grid.mixes.len(), grid.locks.len());
    let root = SVGBackend::new(path, (420 * cols as u32, 300 * rows as u32 + 40)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let root =
            root.titled(&format!("{pcpus} pCPUs: mean result / ideal per VM (simulated)"), ("sans-serif", 18))?;
        let panels = root.split_evenly((rows, cols));
        let x_max = grid.overcommit.iter().copied().fold(1.0, f64::max);
        let x_min = grid.overcommit.iter().copied().fold(x_max, f64::min);
        for (panel, (mix, locks)) in
            panels.iter().zip(grid.mixes.iter().flat_map(|mix| grid.locks.iter().map(move |locks| (mix, locks))))
        {
            let mine: Vec<&SweepResult> =
                points.iter().filter(|p| p.pcpus == pcpus && &p.mix == mix && &p.locks == locks).collect();
            let top = mine.iter().map(|p| p.mean_ratio).filter(|r| r.is_finite()).fold(1.0, f64::max) * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{mix}, {locks} locks"), ("sans-serif", 14))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(x_min - 0.1..x_max + 0.1, 0.0..top)?;
            chart.configure_mesh().x_desc("overcommit (VCPUs / pCPUs)").y_desc("result / ideal").draw()?;
            for (k, policy) in grid.policies.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                let mut line: Vec<(f64, f64)> =
                    mine.iter().filter(|p| p.policy == policy.name()).map(|p| (p.overcommit, p.mean_ratio)).collect();
                line.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                    .label(policy.name())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2)));
                chart.draw_series(line.into_iter().map(|xy| Circle::new(xy, 3, color.filled())))?;
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| anyhow::anyhow!("{error}")).with_context(|| format!("cannot draw {}", path.display()))
}
