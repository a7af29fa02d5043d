import Charts
import SwiftUI

/// The training loss per step.
struct LossChart: View {
    let losses: [Double]

    var body: some View {
        Chart(Array(losses.enumerated()), id: \.offset) { point in
            LineMark(x: .value("Step", point.offset + 1), y: .value("Loss", point.element))
            PointMark(x: .value("Step", point.offset + 1), y: .value("Loss", point.element))
                .symbolSize(12)
        }
        .chartXAxisLabel("step")
        .chartYAxisLabel("loss")
        .chartYScale(domain: .automatic(includesZero: false))
    }
}
