set terminal svg size 800,480 dynamic background rgb 'white'
set output 'latency_vs_load.svg'
set title "request p99 vs offered load"
set xlabel "offered requests/s"
set ylabel "request p99 (us, log)"
set termoption noenhanced
set grid
set key left top
set logscale y
plot 'latency_vs_load.dat' index 0 using 1:2 with linespoints lw 2 title "floe, 16 clients", 'latency_vs_load.dat' index 1 using 1:2 with linespoints lw 2 title "old, 16 clients", 'latency_vs_load.dat' index 2 using 1:2 with linespoints lw 2 title "per_device_socket, 16 clients", 'latency_vs_load.dat' index 3 using 1:2 with linespoints lw 2 title "floe (tcp), 16 clients", 'latency_vs_load.dat' index 4 using 1:2 with linespoints lw 2 title "old (tcp), 16 clients", 'latency_vs_load.dat' index 5 using 1:2 with linespoints lw 2 title "per_device_socket (tcp), 16 clients"
