set terminal svg size 800,480 dynamic background rgb 'white'
set output 'request_cdf.svg'
set title "request latency CDF, 100 devices, 1 client, device inside the provider"
set xlabel "latency (us, log)"
set ylabel "fraction at or below"
set termoption noenhanced
set grid
set key right bottom
set logscale x
plot 'request_cdf.dat' index 0 using 1:2 with steps lw 2 title "floe", 'request_cdf.dat' index 1 using 1:2 with steps lw 2 title "old", 'request_cdf.dat' index 2 using 1:2 with steps lw 2 title "per_device_socket"
