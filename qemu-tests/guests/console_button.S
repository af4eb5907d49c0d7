/* console_button: a guest to manage with `ferrite xl`. Prints
 * "console_button ready", then echoes every line typed on its console as
 * "echo: <line>", and powers off when its ACPI power button is pressed
 * (PM1 status PWRBTN_STS, polled every millisecond), saying
 * "power button pressed" first. An NMI (`xl trigger <dom> nmi`) is
 * reported as "nmi <count> received". */
        .include "pvh.inc"

        .set COM1_LSR_DR,   0x01
        .set PM1A_STS,      0xB000
        .set PWRBTN_STS,    0x0100
        .set LINE_MAX,      120

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    2, nmi_handler
        movl    $msg_ready, %esi
        call    puts
        xorl    %edi, %edi                  /* bytes in `line` */
poll:
        movl    nmi_count, %eax
        cmpl    nmi_reported, %eax
        jne     report_nmi
        movw    $PM1A_STS, %dx
        inw     %dx, %ax
        testw   $PWRBTN_STS, %ax
        jnz     pressed
        movw    $COM1_LSR, %dx
        inb     %dx, %al
        testb   $COM1_LSR_DR, %al
        jnz     got_byte
        movl    $(PM_TMR_HZ / 1000), %eax
        call    pm_wait
        jmp     poll
got_byte:
        movw    $COM1, %dx
        inb     %dx, %al
        cmpb    $'\r', %al
        je      end_line
        cmpb    $'\n', %al
        je      end_line
        cmpl    $LINE_MAX, %edi
        jae     poll
        movb    %al, line(%edi)
        incl    %edi
        jmp     poll
end_line:
        testl   %edi, %edi
        jz      poll
        movb    $0, line(%edi)
        movl    $msg_echo, %esi
        call    puts
        movl    $line, %esi
        call    puts
        movb    $'\n', %al
        call    putc
        xorl    %edi, %edi
        jmp     poll
report_nmi:
        movl    %eax, nmi_reported
        movl    $msg_nmi, %esi
        call    puts
        call    putdec
        movl    $msg_received, %esi
        call    puts
        jmp     poll
/* Counts only: printing here could cut into a line being printed. */
nmi_handler:
        lock incl nmi_count
        iret
pressed:
        /* Write-1-to-clear, as an OS acknowledges the event. */
        movw    $PWRBTN_STS, %ax
        outw    %ax, %dx
        movl    $msg_pressed, %esi
        call    puts
        jmp     poweroff

        .section .rodata
msg_ready:   .asciz "console_button ready\n"
msg_echo:    .asciz "echo: "
msg_pressed: .asciz "power button pressed\n"
msg_nmi:     .asciz "nmi "
msg_received: .asciz " received\n"

        .data
        .balign 4
nmi_count:    .long 0
nmi_reported: .long 0
line:   .space  LINE_MAX + 1
