set terminal svg size 800,480 dynamic background rgb 'white'
set output 'throughput_vs_devices.svg'
set title "saturation throughput, 16 clients"
set xlabel "devices (log)"
set ylabel "requests/s"
set termoption noenhanced
set grid
set key left top
set logscale x
plot 'throughput_vs_devices.dat' index 0 using 1:2 with linespoints lw 2 title "floe", 'throughput_vs_devices.dat' index 1 using 1:2 with linespoints lw 2 title "old", 'throughput_vs_devices.dat' index 2 using 1:2 with linespoints lw 2 title "per_device_socket", 'throughput_vs_devices.dat' index 3 using 1:2 with linespoints lw 2 title "floe (tcp)", 'throughput_vs_devices.dat' index 4 using 1:2 with linespoints lw 2 title "old (tcp)", 'throughput_vs_devices.dat' index 5 using 1:2 with linespoints lw 2 title "per_device_socket (tcp)"
