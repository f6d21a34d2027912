set terminal svg size 800,480 dynamic background rgb 'white'
set output 'cpu_vs_latency.svg'
set title "CPU per request vs request p50, 100 devices, 1 client"
set xlabel "core + provider CPU per request (us, log)"
set ylabel "request p50 (us, log)"
set termoption noenhanced
set grid
set key left top
set offsets graph 0.1, graph 0.3, graph 0.15, graph 0.15
set logscale x
set logscale y
plot 'cpu_vs_latency.labels' using 1:2:3 with labels point pt 7 ps 1.2 offset char 1,0.6 left notitle
