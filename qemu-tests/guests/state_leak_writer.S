/* state_leak_writer: the writer half of `state_leak.S`. */
        .set WRITER, 1
        .include "state_leak.S"
