/* ticker_long: the ticker with 100 ticks (10 s), beside attacks that
 * last longer than the ticker's 2 s (hostile_stub.rs). */
        .set TICKS, 100
        .include "ticker.S"
